// Recursive halving (reduce-scatter) then recursive doubling (allgather), for any p.
//
// With p' the largest power of two <= p, the first 2(p - p') ranks pair up: each even one
// folds its whole vector into its odd neighbour, sits out, and gets the result back at the end.
// The p' remaining ranks run the power-of-two algorithm: log2(p') steps that halve the range
// each rank owns while exchanging the other half with the partner, then the same steps in
// reverse to gather.
#include <vector>

#include "algorithms/algorithm.h"

namespace far {

void halving_doubling_allreduce(P2P& t, const Job& job, const AlgoOptions& o, Staging& st) {
  const int p = t.size(), r = t.rank();
  if (p == 1 || job.count == 0) return;
  int pow2 = 1;
  while (pow2 * 2 <= p) pow2 *= 2;
  const int extra = p - pow2;
  const Span all{0, job.count};

  int vr;  // rank among the p' participants, or -1 for a folded-out rank
  if (r < 2 * extra) {
    if (r % 2 == 0) {
      exchange(t, r + 1, all, Span{}, Merge::kCopy, job, o, st);  // fold in
      exchange(t, r + 1, Span{}, all, Merge::kCopy, job, o, st);  // result back
      return;
    }
    exchange(t, r - 1, Span{}, all, Merge::kReduce, job, o, st);
    vr = r / 2;
  } else {
    vr = r - extra;
  }
  auto real = [&](int v) { return v < extra ? 2 * v + 1 : v + extra; };

  std::vector<Span> owned{all};  // owned[i]: range held after i halving steps
  for (int mask = pow2 / 2; mask >= 1; mask /= 2) {
    const Span cur = owned.back();
    const Span lo{cur.begin, cur.len / 2}, hi{cur.begin + cur.len / 2, cur.len - cur.len / 2};
    const bool keep_lo = (vr & mask) == 0;
    const Span keep = keep_lo ? lo : hi, give = keep_lo ? hi : lo;
    exchange(t, real(vr ^ mask), give, keep, Merge::kReduce, job, o, st);
    owned.push_back(keep);
  }
  if (job.op == RedOp::kAvg) {
    const Span mine = owned.back();
    scale_div(job.at(mine.begin), mine.len, job.dtype, job.divisor, o.threads);
  }
  for (int mask = 1, level = static_cast<int>(owned.size()) - 1; mask < pow2; mask *= 2, --level) {
    const Span mine = owned[level], parent = owned[level - 1];
    const Span other = mine.begin == parent.begin ? Span{parent.begin + mine.len, parent.len - mine.len}
                                                  : Span{parent.begin, parent.len - mine.len};
    exchange(t, real(vr ^ mask), mine, other, Merge::kCopy, job, o, st);
  }
  if (r < 2 * extra) exchange(t, r - 1, all, Span{}, Merge::kCopy, job, o, st);
}

}  // namespace far
