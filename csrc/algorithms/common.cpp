// Helpers shared by the point-to-point algorithms: staging buffers, segmented exchange,
// cost model.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <stdexcept>

#include "algorithms/algorithm.h"

namespace far {

char* Staging::get(int i, size_t bytes) {
  if (static_cast<size_t>(i) >= bufs_.size()) bufs_.resize(i + 1, {nullptr, 0});
  auto& b = bufs_[i];
  if (b.second < bytes) {
    if (b.first && !leaked_) std::free(b.first);
    b.first = static_cast<char*>(std::aligned_alloc(64, (bytes + 63) & ~size_t(63)));
    if (!b.first) throw std::bad_alloc();
    b.second = bytes;
  }
  return b.first;
}

void Staging::leak() {
  leaked_ = true;
}

Staging::~Staging() {
  if (leaked_) return;
  for (auto& b : bufs_) std::free(b.first);
}

void exchange(P2P& t, int peer, Span send, Span recv, Merge merge, const Job& job,
              const AlgoOptions& o, Staging& st) {
  const size_t seg = seg_elems(job, o), es = job.esize();
  const size_t nsend = (send.len + seg - 1) / seg, nrecv = (recv.len + seg - 1) / seg;
  const bool swap = send.len && recv.len && send.begin == recv.begin && send.len == recv.len;
  const bool overlap = send.begin < recv.begin + recv.len && recv.begin < send.begin + send.len;
  if (!swap && send.len && recv.len && overlap)
    throw std::logic_error("fastallreduce: exchange of overlapping, different spans");
  const int w = std::max(1, o.window);
  std::vector<Request> sends;
  sends.reserve(nsend);
  for (size_t j = 0; j < nsend; ++j) {
    Span s = segment(send, seg, j);
    sends.push_back(t.isend(peer, job.at(s.begin), s.len * es));
  }
  std::deque<Request> recvs;
  auto post = [&](size_t j) {
    Span s = segment(recv, seg, j);
    recvs.push_back(t.irecv(peer, st.get(static_cast<int>(j % w), seg * es), s.len * es));
  };
  for (size_t j = 0; j < std::min<size_t>(w, nrecv); ++j) post(j);
  for (size_t j = 0; j < nrecv; ++j) {
    t.wait(recvs.front());
    recvs.pop_front();
    Span s = segment(recv, seg, j);
    char* stage = st.get(static_cast<int>(j % w), seg * es);
    if (swap) t.wait(sends[j]);  // the segment is still being sent from where it is merged
    char* dst = job.at(s.begin);
    switch (merge) {
      case Merge::kReduce: reduce_inplace(dst, stage, s.len, job.dtype, job.op, o.threads); break;
      case Merge::kCopy: std::memcpy(dst, stage, s.len * es); break;
      case Merge::kReduceMineFirst:
      case Merge::kReduceTheirsFirst: {
        const bool mine_first = merge == Merge::kReduceMineFirst;
        const void* srcs[2] = {mine_first ? dst : stage, mine_first ? stage : dst};
        const RedOp op = job.op == RedOp::kAvg ? RedOp::kSum : job.op;  // the caller divides
        reduce_many(dst, srcs, 2, s.len, job.dtype, op, 1, o.threads);
        break;
      }
    }
    if (j + w < nrecv) post(j + w);
  }
  for (auto& r : sends) t.wait(r);
}

double CostModel::ring_us(size_t bytes, int p) const {
  if (p <= 1) return 0;
  return 2.0 * (p - 1) * alpha_us + 2.0 * (p - 1) / p * bytes / (beta_gbps * 1e3);
}

double CostModel::hier_us(size_t bytes, int hosts, int local, size_t chunk_bytes) const {
  const double chunks = std::max<size_t>(1, (bytes + chunk_bytes - 1) / std::max<size_t>(1, chunk_bytes));
  // Two hosts swap their slices in one step (pair_allreduce); more run a ring.
  const double cross_steps = hosts == 2 ? 1.0 : hosts > 2 ? 2.0 * (hosts - 1) : 0.0;
  const double cross_bytes = hosts > 1 ? 2.0 * (hosts - 1) / hosts * bytes / std::max(1, local) : 0.0;
  return chunks * (shm_stage_us + cross_steps * alpha_us) + bytes / (shm_gbps * 1e3) + cross_bytes / (beta_gbps * 1e3);
}

double CostModel::hd_us(size_t bytes, int p) const {
  if (p <= 1) return 0;
  int pow2 = 1, steps = 0;
  while (pow2 * 2 <= p) pow2 *= 2, ++steps;
  double us = 2.0 * steps * alpha_us + 2.0 * (pow2 - 1) / pow2 * bytes / (beta_gbps * 1e3);
  if (pow2 != p) us += 2.0 * alpha_us + 2.0 * bytes / (beta_gbps * 1e3);  // fold in, send back
  return us;
}

}  // namespace far
