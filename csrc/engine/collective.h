// What enters the engine's front door, and what the front door makes of it.
#pragma once
#include <ATen/ATen.h>
#include <c10/core/Stream.h>

#include <optional>

#include "common/header.h"
#include "common/types.h"

namespace far {

// One collective as a caller states it. Tensors may be of any layout, contiguity or device: the
// front door validates them, and stages what the engine cannot take as it is.
struct Collective {
  Kind kind = Kind::kAllreduce;
  RedOp op = RedOp::kSum;  // allreduce, reduce_scatter
  int root = 0;            // broadcast's source (group rank)
  Algo algo = Algo::kAuto; // requested algorithm (allreduce)
  at::Tensor input;
  // allreduce: undefined or `input` for in place; allgather: size x input elements;
  // reduce_scatter: input / size elements; broadcast: ignored (in place).
  at::Tensor output;
  bool account = false;    // counted in the communicator's accounted totals (OpStats)
};

// A collective that another backend runs (the torch backend's Gloo). The engine only checks its
// header across ranks, in FIFO order with its own collectives. `count` is 0 where ranks may
// legitimately differ (all_to_all splits).
struct Delegated {
  Kind kind = Kind::kAllreduce;
  RedOp op = RedOp::kSum;
  int root = 0;
  at::ScalarType dtype = at::kByte;
  int64_t count = 0;
  c10::DeviceType device = c10::kCPU;
};

// A validated call, as the engine runs it: contiguous tensors the kernels take.
struct Call {
  Kind kind = Kind::kAllreduce;
  RedOp op = RedOp::kSum;
  int root = 0;
  Algo algo = Algo::kAuto;  // the path: identical on every rank
  // Across hosts, a gather-family call runs as one allreduce of its bytes: that allreduce's path.
  Algo inner_algo = Algo::kAuto;
  at::Tensor in, out;
  at::Tensor copy_back;     // staged output: copied into this after the op (undefined: none)
  Header header;            // without seq and rank
  // CUDA: the caller's current stream at the call; the op is ordered after its queued work.
  std::optional<c10::Stream> stream;
  bool account = false;
  int64_t submitted_ns = 0;  // when the front door took it (accounted calls)
  // What the caller gets back: its own tensor when the output was staged.
  const at::Tensor& result() const { return copy_back.defined() ? copy_back : out; }
};

}  // namespace far
