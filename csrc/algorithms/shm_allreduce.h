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
