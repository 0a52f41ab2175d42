// Ring allreduce: reduce-scatter then allgather, pipelined across steps.
//
// The buffer is split into p blocks and each block into segments. Global step t (0..2p-3)
// sends block (r - t) mod p and receives block (r - t - 1) mod p; the first p-1 steps reduce
// what arrives, the last p-1 copy it. A segment received at step t is exactly what is sent at
// step t+1, so each segment is forwarded as soon as it is merged: reducing one segment
// overlaps moving the next, also across step boundaries.
#include <cstring>
#include <deque>

#include "algorithms/algorithm.h"

namespace far {

void ring_allreduce(P2P& t, const Job& job, const AlgoOptions& o, Staging& st) {
  const int p = t.size(), r = t.rank();
  if (p == 1 || job.count == 0) return;
  const int right = (r + 1) % p, left = (r - 1 + p) % p;
  const size_t es = job.esize(), seg = seg_elems(job, o);
  const size_t nseg = (part(job.count, p, 0).len + seg - 1) / seg;  // block 0 is the largest
  const int steps = 2 * (p - 1);
  const size_t units = static_cast<size_t>(steps) * nseg;
  const int w = std::max(1, o.window);
  auto block = [&](int step, bool sending) {
    int b = ((r - step - (sending ? 0 : 1)) % p + p) % p;
    return part(job.count, p, b);
  };
  auto unit_span = [&](size_t k, bool sending) {
    return segment(block(static_cast<int>(k / nseg), sending), seg, k % nseg);
  };
  std::deque<Request> sends;
  auto post_send = [&](size_t k) {
    Span s = unit_span(k, true);
    if (s.len) sends.push_back(t.isend(right, job.at(s.begin), s.len * es));
    // Bound the sends in flight; the receiver is at most a window behind, so this cannot stall.
    while (sends.size() > static_cast<size_t>(2 * w) + nseg) {
      t.wait(sends.front());
      sends.pop_front();
    }
  };
  std::vector<Request> recvs(w);
  auto post_recv = [&](size_t k) {
    Span s = unit_span(k, false);
    if (s.len) recvs[k % w] = t.irecv(left, st.get(static_cast<int>(k % w), seg * es), s.len * es);
  };
  for (size_t k = 0; k < nseg; ++k) post_send(k);
  for (size_t k = 0; k < std::min<size_t>(w, units); ++k) post_recv(k);
  for (size_t k = 0; k < units; ++k) {
    const int step = static_cast<int>(k / nseg);
    Span s = unit_span(k, false);
    if (s.len) {
      t.wait(recvs[k % w]);
      char* stage = st.get(static_cast<int>(k % w), seg * es);
      if (step < p - 1) {
        reduce_inplace(job.at(s.begin), stage, s.len, job.dtype, job.op, o.threads);
        // The last reduce-scatter step completes this rank's own block: finish avg once, here,
        // so that every rank receives identical bits.
        if (step == p - 2 && job.op == RedOp::kAvg)
          scale_div(job.at(s.begin), s.len, job.dtype, job.divisor, o.threads);
      } else {
        std::memcpy(job.at(s.begin), stage, s.len * es);
      }
    }
    if (k + w < units) post_recv(k + w);
    if (k + nseg < units) post_send(k + nseg);
  }
  for (auto& q : sends) t.wait(q);
}

}  // namespace far
