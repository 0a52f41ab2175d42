// Two-rank allreduce: both ranks send their whole buffer to the other and reduce as it arrives,
// rank 0's data first on both, so both get the same bits. Ring and halving-doubling move the
// same bytes between two ranks in two dependent steps (reduce-scatter, then allgather); here
// there is one, which is what a cross-host message costs most: its latency.
#include <algorithm>
#include <stdexcept>

#include "algorithms/algorithm.h"

namespace far {

void pair_allreduce(P2P& t, const Job& job, const AlgoOptions& o, Staging& st) {
  if (t.size() != 2) throw std::logic_error("fastallreduce: pair_allreduce needs exactly two ranks");
  if (job.count == 0) return;
  // At most a window of segments: each further Gloo message costs a round trip on the link
  // (the receiver's ready notice) that the posted receives no longer hide.
  AlgoOptions po = o;
  const size_t w = static_cast<size_t>(std::max(1, o.window)), bytes = job.count * job.esize();
  po.chunk_bytes = std::max(o.chunk_bytes, (bytes + w - 1) / w);
  const Span all{0, job.count};
  exchange(t, 1 - t.rank(), all, all, t.rank() == 0 ? Merge::kReduceMineFirst : Merge::kReduceTheirsFirst, job, po,
           st);
  if (job.op == RedOp::kAvg) scale_div(job.buf, job.count, job.dtype, job.divisor, o.threads);
}

}  // namespace far
