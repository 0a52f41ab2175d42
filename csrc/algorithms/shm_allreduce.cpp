// Shared-memory allreduce: copy in, each rank reduces its own slice straight from every peer's
// segment, then every rank copies all slices out.
//
// Per chunk (k counts chunks over the communicator's life; slot k % 2, double buffered):
//   1. wait until every rank is done with chunk k-2 (that freed slot k % 2), copy in, publish filled=k
//   2. wait for every rank's filled=k; compare headers (the always-on mismatch check: every
//      rank compares all headers, so every rank sees a mismatch)
//   3a. small messages (one-shot): reduce the whole chunk from all segments into the output
//   3b. otherwise: reduce my slice from all segments into my own segment, run the stage (the
//       cross-host allreduce in the hierarchical algorithm), publish reduced=k, wait for
//       every rank's reduced=k, copy every slice out
//   4. publish done=k
// Every rank sums in the same order (local rank 0..L-1), so every rank gets the same bits;
// 16-bit floats are summed in float32 and rounded once.
#include "algorithms/shm_allreduce.h"

#include <cstring>
#include <sstream>
#include <vector>

#include "common/errors.h"

namespace far {
namespace {

// Slice i of a chunk of n elements cut into `parts`, slice edges on 64-byte boundaries so that
// ranks writing neighbouring slices never share a cache line.
Span aligned_part(size_t n, int parts, int i, size_t esize) {
  const size_t align = std::max<size_t>(1, 64 / esize);
  size_t per = (n + parts - 1) / parts;
  per = (per + align - 1) / align * align;
  const size_t b = std::min(n, per * i), e = std::min(n, b + per);
  return Span{b, e - b};
}

}  // namespace

void check_shm_headers(ShmContext& ctx, int slot) {
  const Header& mine = ctx.header;
  const int gone = ctx.group.aborted_peer();
  if (gone >= 0)
    throw CommError("fastallreduce: rank " + std::to_string(ctx.group.group_rank(gone)) +
                    " has aborted its communicator; " + mine.describe() + " cannot complete");
  for (int r = 0; r < ctx.group.local_size(); ++r) {
    const Header& h = ctx.group.ctrl(r).header[slot];
    if (!mine.same_call(h)) {
      std::ostringstream os;
      os << "fastallreduce: mismatched collective: rank " << mine.rank << " called " << mine.describe()
         << " but rank " << h.rank << " called " << h.describe();
      throw MismatchError(os.str());
    }
  }
}

ShmChunk begin_chunk(ShmContext& ctx) {
  ShmGroup& g = ctx.group;
  const uint32_t k = g.next_chunk();
  if (k > 2) g.wait_all(&ShmControl::done, k - 2, "slot reuse", ctx.header, ctx.deadline, ctx.poll);
  return ShmChunk{k, static_cast<int>(k % 2)};
}

void publish_filled(ShmContext& ctx, const ShmChunk& c) {
  ShmGroup& g = ctx.group;
  g.ctrl(g.local_rank()).header[c.slot] = ctx.header;
  g.publish(&ShmControl::filled, c.k);
  g.wait_all(&ShmControl::filled, c.k, "copy-in", ctx.header, ctx.deadline, ctx.poll);
  check_shm_headers(ctx, c.slot);
}

void shm_header_only(ShmContext& ctx) {
  const ShmChunk ch = begin_chunk(ctx);
  publish_filled(ctx, ch);
  ctx.group.publish(&ShmControl::reduced, ch.k);
  ctx.group.publish(&ShmControl::done, ch.k);
}

void shm_allreduce(ShmContext& ctx, const Job& job, const ShmOptions& o, const SliceStage* stage) {
  ShmGroup& g = ctx.group;
  const int L = g.local_size(), me = g.local_rank();
  const size_t es = job.esize();
  // Hierarchical moves whole slots: each chunk there costs a cross-host message latency.
  const size_t bytes = job.count * es;
  const size_t chunk_bytes = stage ? g.slot_bytes() : shm_chunk_bytes(g, o, bytes);
  const size_t chunk_elems = std::max<size_t>(1, chunk_bytes / es);
  const size_t nchunks = std::max<size_t>(1, (job.count + chunk_elems - 1) / chunk_elems);
  // One-shot saves a wait per chunk but reads every peer's whole message; with two ranks that is
  // only 2N, so the threshold doubles (64 KiB: 14-18 us one-shot against 19-81 us, run to run,
  // with reduce-scatter/allgather here; at 8 ranks one-shot at 64 KiB was slower).
  const size_t oneshot_limit = L == 2 ? 2 * o.oneshot_bytes : o.oneshot_bytes;
  const bool oneshot = stage == nullptr && bytes <= oneshot_limit;
  // With a stage, the local reduction is a plain sum and the stage applies avg's division once;
  // except for 16-bit floats, whose rounded local sum could overflow where the average fits:
  // they divide locally (in float32, before rounding) and the stage sums.
  const bool avg = job.op == RedOp::kAvg, divide_first = stage && avg && is_16bit_float(job.dtype);
  const RedOp local_op = (stage && avg && !divide_first) ? RedOp::kSum : job.op;
  const int local_div = (!stage || divide_first) ? job.divisor : 1;
  const char* src = static_cast<const char*>(job.src ? job.src : job.buf);
  std::vector<const void*> srcs(L);

  for (size_t c = 0; c < nchunks; ++c) {
    const size_t off = c * chunk_elems, n = std::min(chunk_elems, job.count - std::min(job.count, off));
    const ShmChunk ch = begin_chunk(ctx);
    const uint32_t k = ch.k;
    const int s = ch.slot;
    char* mine = g.slot(me, s);
    const Span my = aligned_part(n, L, me, es);
    // Peers read every slice of my segment but mine, which I reduce straight from the input.
    if (oneshot) {
      if (n) std::memcpy(mine, src + off * es, n * es);
    } else {
      if (my.begin) std::memcpy(mine, src + off * es, my.begin * es);
      const size_t tail = my.begin + my.len;
      if (n > tail) std::memcpy(mine + tail * es, src + (off + tail) * es, (n - tail) * es);
    }
    publish_filled(ctx, ch);
    char* out = job.at(off);
    if (oneshot) {
      for (int r = 0; r < L; ++r) srcs[r] = g.slot(r, s);
      if (n) reduce_many(out, srcs.data(), L, n, job.dtype, job.op, job.divisor, o.threads);
      g.publish(&ShmControl::reduced, k);
      g.publish(&ShmControl::done, k);
      continue;
    }
    for (int r = 0; r < L; ++r) srcs[r] = g.slot(r, s) + my.begin * es;
    srcs[me] = src + (off + my.begin) * es;
    if (my.len) reduce_many(mine + my.begin * es, srcs.data(), L, my.len, job.dtype, local_op, local_div, o.threads);
    if (stage) {
      Job slice = job;
      slice.buf = mine + my.begin * es;
      slice.src = nullptr;
      slice.count = my.len;
      if (divide_first) slice.op = RedOp::kSum;
      (*stage)(slice);
    }
    g.publish(&ShmControl::reduced, k);
    g.wait_all(&ShmControl::reduced, k, "reduce-scatter", ctx.header, ctx.deadline, ctx.poll);
    for (int r = 0; r < L; ++r) {
      const Span sl = aligned_part(n, L, r, es);
      if (sl.len) std::memcpy(out + sl.begin * es, g.slot(r, s) + sl.begin * es, sl.len * es);
    }
    g.publish(&ShmControl::done, k);
  }
}

}  // namespace far
