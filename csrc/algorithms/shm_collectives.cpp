// Shared-memory allgather, reduce_scatter and broadcast: the same segments, counters and slot
// headers as shm_allreduce, so collectives of every kind form one sequence and a rank that
// calls a different collective is caught by the header check before any data is read.
//
// Per chunk k (slot k % 2):
//   1. wait until every rank is done with chunk k-2, copy my contribution in, publish filled=k
//        allgather: my chunk; reduce_scatter: my input's chunk of every rank's slice;
//        broadcast: the root's chunk (the others copy nothing)
//   2. wait for every rank's filled=k, compare headers
//   3. read straight from the peers' slots
//        allgather: every rank's chunk; reduce_scatter: my slice from every rank, reduced in
//        local-rank order (deterministic); broadcast: the root's chunk
//   4. publish reduced=k (keeps the counters in step with shm_allreduce) and done=k
#include "algorithms/shm_collectives.h"

#include <cstring>
#include <stdexcept>
#include <vector>

namespace far {

void shm_gather_family(ShmContext& ctx, const FamilyJob& job, const ShmOptions& o) {
  ShmGroup& g = ctx.group;
  const int L = g.local_size(), me = g.local_rank();
  const size_t es = dtype_size(job.dtype);
  // A reduce_scatter chunk holds one piece per rank in each slot.
  const size_t pieces = job.kind == Kind::kReduceScatter ? static_cast<size_t>(L) : 1;
  if (pieces * es > g.slot_bytes()) throw std::invalid_argument("fastallreduce: shared-memory slot too small");
  const size_t chunk = std::max<size_t>(1, shm_chunk_bytes(g, o, job.count * es * pieces) / (es * pieces));
  const size_t nchunks = std::max<size_t>(1, (job.count + chunk - 1) / chunk);
  std::vector<const void*> srcs(L);
  // In place (the output is my slice of the input): my own piece is reduced from a copy in my
  // slot, so that the kernel never reads the very elements it writes.
  const bool rs_in_place =
      job.kind == Kind::kReduceScatter && job.out == job.in + static_cast<size_t>(g.group_rank(me)) * job.count * es;

  for (size_t c = 0; c < nchunks; ++c) {
    const size_t off = c * chunk, n = std::min(chunk, job.count - std::min(job.count, off));
    const ShmChunk ch = begin_chunk(ctx);
    const int s = ch.slot;
    char* mine = g.slot(me, s);
    if (n) {
      if (job.kind == Kind::kAllgather || (job.kind == Kind::kBroadcast && me == job.root)) {
        std::memcpy(mine, job.in + off * es, n * es);
      } else if (job.kind == Kind::kReduceScatter) {
        // Piece r of my slot: my input's chunk of local rank r's slice (my own I reduce from the input).
        for (int r = 0; r < L; ++r)
          if (r != me || rs_in_place)
            std::memcpy(mine + r * n * es, job.in + (g.group_rank(r) * job.count + off) * es, n * es);
      }
    }
    publish_filled(ctx, ch);
    if (n) {
      switch (job.kind) {
        case Kind::kAllgather:
          for (int r = 0; r < L; ++r)
            std::memcpy(job.out + (g.group_rank(r) * job.count + off) * es, g.slot(r, s), n * es);
          break;
        case Kind::kReduceScatter:
          for (int r = 0; r < L; ++r) srcs[r] = g.slot(r, s) + me * n * es;
          if (!rs_in_place) srcs[me] = job.in + (g.group_rank(me) * job.count + off) * es;
          reduce_many(job.out + off * es, srcs.data(), L, n, job.dtype, job.op, job.divisor, o.threads);
          break;
        case Kind::kBroadcast:
          if (me != job.root) std::memcpy(job.out + off * es, g.slot(job.root, s), n * es);
          else if (job.out != job.in) std::memcpy(job.out + off * es, job.in + off * es, n * es);
          break;
        case Kind::kAllreduce:
          throw std::logic_error("shm_gather_family: allreduce has its own path");
      }
    }
    g.publish(&ShmControl::reduced, ch.k);
    g.publish(&ShmControl::done, ch.k);
  }
}

}  // namespace far
