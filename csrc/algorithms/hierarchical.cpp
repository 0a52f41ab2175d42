// Hierarchical allreduce: shared-memory reduce-scatter inside each host, then every local rank
// allreduces its slice with the ranks of the same local index on the other hosts (all local
// ranks at once, each over its own process group), then the shared-memory allgather.
// Needs the same number of ranks on every host; the engine falls back to a flat algorithm
// otherwise.
//
// The cross-host stage between two hosts is a pair swap (one message step, every op). Among
// more hosts, sum, avg and product run as Gloo's own allreduce (one c10d Work per slice: its
// ring runs on Gloo's thread, with none of the per-message Works of send/recv); max and min
// keep our ring / halving-doubling, whose kernels let NaN win as torch.maximum does (Gloo's
// std::max does not), and so does bool.
#include "algorithms/hierarchical.h"

namespace far {

bool cross_on_collective(RedOp op, DType dtype) {
  return dtype != DType::kBool && (op == RedOp::kSum || op == RedOp::kAvg || op == RedOp::kProduct);
}

void hierarchical_allreduce(ShmContext& ctx, P2P& cross, const Job& job, const ShmOptions& so,
                            const AlgoOptions& ao, const CostModel& cost, Staging& st) {
  SliceStage stage = [&](const Job& slice) {
    if (cross.size() == 1 || slice.count == 0) {
      if (slice.op == RedOp::kAvg) scale_div(slice.buf, slice.count, slice.dtype, slice.divisor, ao.threads);
      return;
    }
    if (cross.size() == 2) return pair_allreduce(cross, slice, ao, st);
    if (cross_on_collective(slice.op, slice.dtype)) {
      // Every rank gets Gloo's bits, then divides them identically: the same result everywhere.
      Request r = cross.iallreduce(slice.buf, slice.count, slice.dtype,
                                   slice.op == RedOp::kAvg ? RedOp::kSum : slice.op, ctx.deadline);
      cross.wait(r);
      if (slice.op == RedOp::kAvg) scale_div(slice.buf, slice.count, slice.dtype, slice.divisor, ao.threads);
      return;
    }
    const size_t bytes = slice.count * slice.esize();
    if (cost.hd_us(bytes, cross.size()) <= cost.ring_us(bytes, cross.size()))
      halving_doubling_allreduce(cross, slice, ao, st);
    else
      ring_allreduce(cross, slice, ao, st);
  };
  shm_allreduce(ctx, job, so, &stage);
}

}  // namespace far
