// Shared-memory allreduce among the ranks of one host, optionally with a stage between its
// reduce-scatter and allgather (the hierarchical algorithm plugs the cross-host allreduce in).
#pragma once
#include <chrono>
#include <functional>

#include "algorithms/algorithm.h"
#include "transport/shm.h"

namespace far {

struct ShmOptions {
  size_t oneshot_bytes = 32 * 1024;  // at or below: every rank reduces the whole message
  // Chunk of the flat shared-memory path for messages larger than a slot. Small enough that a
  // chunk's input, its slot and the peers' slices stay in cache between copy-in, reduce and
  // copy-out: 512 KiB ran 64 MiB in 13.6 ms against 17.6 ms with 4 MiB chunks (2 ranks, this
  // machine). The hierarchical path keeps whole slots: each chunk costs a cross-host latency.
  size_t chunk_bytes = 512 * 1024;
  int threads = 1;
};

struct ShmContext {
  ShmGroup& group;
  const Header& header;
  std::chrono::steady_clock::time_point deadline;
  const std::function<void()>& poll;
};

// Runs on each chunk's reduced slice (in shared memory) before the allgather. The job it gets
// describes the slice; it must allreduce it in place with the final op and divisor.
using SliceStage = std::function<void(const Job& slice)>;

// In-place allreduce of `job` (job.src is copied in, the result lands in job.buf).
void shm_allreduce(ShmContext& ctx, const Job& job, const ShmOptions& o, const SliceStage* stage = nullptr);

}  // namespace far
