// What every allreduce algorithm takes, and the helpers they share.
// One algorithm per file: ring.cpp, halving_doubling.cpp, shm_allreduce.cpp, hierarchical.cpp.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "kernels/reduce.h"
#include "transport/p2p.h"

namespace far {

// One in-place allreduce of `count` elements at `buf`.
struct Job {
  void* buf = nullptr;
  const void* src = nullptr;  // shared-memory paths copy in from here (null: from buf)
  size_t count = 0;
  DType dtype = DType::kFloat32;
  RedOp op = RedOp::kSum;
  int divisor = 1;  // avg divides by this (the world size of the whole collective)
  size_t esize() const { return dtype_size(dtype); }
  char* at(size_t elem) const { return static_cast<char*>(buf) + elem * esize(); }
};

struct AlgoOptions {
  size_t chunk_bytes = 512 * 1024;  // pipeline segment
  int window = 4;                   // receives posted ahead (staging buffers)
  int threads = 1;                  // kernel threads
};

// Receive buffers owned by the communicator. Algorithms receive only into these, never into
// user memory, so that an abandoned receive (after an abort) can never write into a freed tensor.
class Staging {
 public:
  char* get(int i, size_t bytes);
  // After an abort the transport may still write into these: keep them alive forever.
  void leak();
  ~Staging();

 private:
  std::vector<std::pair<char*, size_t>> bufs_;
  bool leaked_ = false;
};

// Element range [begin, begin + len).
struct Span {
  size_t begin = 0, len = 0;
};
// Part i of `n` elements split into `parts` near-equal contiguous parts.
inline Span part(size_t n, int parts, int i) {
  const size_t base = n / parts, rem = n % parts;
  const size_t b = i * base + std::min<size_t>(i, rem);
  return Span{b, base + (static_cast<size_t>(i) < rem ? 1 : 0)};
}
// Segment j of a span cut into pieces of `seg` elements (possibly empty past the end).
inline Span segment(Span s, size_t seg, size_t j) {
  const size_t b = std::min(s.len, j * seg), e = std::min(s.len, (j + 1) * seg);
  return Span{s.begin + b, e - b};
}
inline size_t seg_elems(const Job& job, const AlgoOptions& o) {
  return std::max<size_t>(1, o.chunk_bytes / job.esize());
}

// How exchange() merges a received segment into job.buf. The two ordered reductions run the
// same kernel with the operands in a stated order, so that two ranks swapping the same span
// compute identical bits (NaN payloads included) when each puts the lower rank's data first.
enum class Merge {
  kReduce,             // dst = op(dst, received)
  kCopy,               // dst = received
  kReduceMineFirst,    // dst = op(dst, received), ordered
  kReduceTheirsFirst,  // dst = op(received, dst), ordered
};

// Sends `send` of job.buf to `peer` and receives `recv` from it, merging into job.buf as it
// arrives, in segments so that merging one segment overlaps moving the next. Either span
// may be empty (a one-way transfer). The spans are either disjoint or the same span (a swap:
// each segment is merged once its own send has completed). Avg merges as sum.
void exchange(P2P& t, int peer, Span send, Span recv, Merge merge, const Job& job,
              const AlgoOptions& o, Staging& st);

void ring_allreduce(P2P& t, const Job& job, const AlgoOptions& o, Staging& st);
void halving_doubling_allreduce(P2P& t, const Job& job, const AlgoOptions& o, Staging& st);
// Two ranks: one swap of the whole buffer, then both reduce in rank order (one message step
// where ring and halving-doubling take two, for the same bytes).
void pair_allreduce(P2P& t, const Job& job, const AlgoOptions& o, Staging& st);

// Modelled time of an algorithm for `bytes` on `p` ranks, used by algorithm="auto".
struct CostModel {
  double alpha_us = 60.0;  // per message step (gloo over loopback, measured here)
  double beta_gbps = 1.0;  // point-to-point bandwidth
  // The shared-memory stages of the hierarchical algorithm (copy-in, reduce-scatter, allgather,
  // copy-out): a latency per chunk (the waits on the local peers) and message bytes per second.
  double shm_stage_us = 25.0;
  double shm_gbps = 2.5;
  double ring_us(size_t bytes, int p) const;
  double hd_us(size_t bytes, int p) const;
  // Hierarchical on `hosts` hosts of `local` ranks, in chunks of `chunk_bytes` (a slot): per
  // chunk the shared-memory stages and a cross-host allreduce of the chunk's 1/local share (a
  // pair swap between two hosts, else a ring).
  double hier_us(size_t bytes, int hosts, int local, size_t chunk_bytes) const;
};

}  // namespace far
