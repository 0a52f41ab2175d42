// NCCL through torch: the collectives of CUDA tensors, issued on a ProcessGroupNCCL that the
// engine's creator makes (a BackendFactory, as for Gloo: the engine needs no NCCL or CUDA
// headers). Like torch's own calls, each op is ordered after the work queued on the calling
// thread's current stream; the returned Work's future is CUDA-aware.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <string>

#include "common/types.h"

namespace far {

// One collective on `pg`, in the engine's layouts: allreduce out <- op(in) (out may be in);
// broadcast in place from `root`; allgather out = size x in; reduce_scatter out = block of in.
// avg divides before the wire (x / size, as torch's default DDP hook does), then sums, so a
// 16-bit average never overflows where the average fits; the input of a reduce_scatter is
// divided into a temporary, never in place. Tensors must be contiguous, on one CUDA device.
c10::intrusive_ptr<c10d::Work> nccl_issue(c10d::Backend& pg, Kind kind, RedOp op, const at::Tensor& in,
                                          const at::Tensor& out, int root);

// What a finished NCCL Work's result (c10d::WorkResult, as torch's NCCL watchdog reports it)
// means: "" for success, "timeout|<message>" for a timeout, "fault|<message>" for NCCL's
// communication errors (a peer lost, a remote error) and anything unknown. `what` names the op.
std::string nccl_fault_record(int work_result, int rank, const std::string& what);

}  // namespace far
