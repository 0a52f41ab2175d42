// Shared-memory allreduce: copy in, each rank reduces its own slice straight from every peer's
// segment, then every rank copies all slices out.
//
// Per chunk (k counts chunks over the communicator's life; slot k % 2, double buffered):
//   1. wait until every rank is done with chunk k-2 (that freed slot k % 2), copy in, publish filled=k
//   2. wait for every rank's filled=k; compare headers (the always-on mismatch check: every
//      rank compares all headers, so every rank sees a mismatch)
//   3a. small messages (one-shot): reduce the whole chunk from all segments into the output
//   3b. otherwise: reduce my slice from all segments into my own segment, run the stage (the
//       cross-host allreduce in the hierarchical algorithm), publish reduced=k, copy my slice
//       out, wait for every rank's reduced=k, copy the other slices out
//   4. publish done=k
// Every rank sums in the same order (local rank 0..L-1), so every rank gets the same bits;
// 16-bit floats are summed in float32 and rounded once.
//
// Registered inputs (zero-copy): a registered rank copies nothing in for chunk 1; the headers
// of chunk 1 then tell every rank alike whether all inputs are registered, none are (the
// copying path goes on), or some are (chunk 1 carried only headers; every rank copies, from the
// first chunk again). All registered: every rank reduces its slice of each chunk from every
// buffer and writes the result into every buffer (see zero_copy), then waits for done.
#include "algorithms/shm_allreduce.h"

#include <cstdint>
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

namespace {

// How one call runs: identical on every rank (it depends only on the call and the group).
struct Plan {
  size_t chunk_elems, nchunks;
  bool oneshot;
  RedOp local_op;
  int local_div;
  bool divide_first;
};

Plan make_plan(const ShmGroup& g, const Job& job, const ShmOptions& o, const SliceStage* stage) {
  Plan p;
  const size_t es = job.esize(), bytes = job.count * es;
  // Hierarchical moves whole slots: each chunk there costs a cross-host message latency.
  const size_t chunk_bytes = stage ? g.slot_bytes() : shm_chunk_bytes(g, o, bytes);
  p.chunk_elems = std::max<size_t>(1, chunk_bytes / es);
  p.nchunks = std::max<size_t>(1, (job.count + p.chunk_elems - 1) / p.chunk_elems);
  // One-shot saves a wait per chunk but reads every peer's whole message; with two ranks that is
  // only 2N, so the threshold doubles (64 KiB: 14-18 us one-shot against 19-81 us, run to run,
  // with reduce-scatter/allgather here; at 8 ranks one-shot at 64 KiB was slower).
  const size_t oneshot_limit = g.local_size() == 2 ? 2 * o.oneshot_bytes : o.oneshot_bytes;
  p.oneshot = stage == nullptr && bytes <= oneshot_limit;
  // With a stage, the local reduction is a plain sum and the stage applies avg's division once;
  // except for 16-bit floats, whose rounded local sum could overflow where the average fits:
  // they divide locally (in float32, before rounding) and the stage sums.
  const bool avg = job.op == RedOp::kAvg;
  p.divide_first = stage && avg && is_16bit_float(job.dtype);
  p.local_op = (stage && avg && !p.divide_first) ? RedOp::kSum : job.op;
  p.local_div = (!stage || p.divide_first) ? job.divisor : 1;
  return p;
}

Span chunk_of(const Job& job, const Plan& p, size_t c) {
  const size_t off = c * p.chunk_elems;
  return Span{off, std::min(p.chunk_elems, job.count - std::min(job.count, off))};
}

// Copies chunk c of the input into my slot: all of it for one-shot, else all but my own slice
// (peers read every slice of my segment but mine, which I reduce straight from the input).
void copy_in(ShmContext& ctx, const ShmChunk& ch, const Job& job, const Plan& p, size_t c) {
  ShmGroup& g = ctx.group;
  const size_t es = job.esize();
  const Span chunk = chunk_of(job, p, c);
  const char* src = static_cast<const char*>(job.src ? job.src : job.buf) + chunk.begin * es;
  char* mine = g.slot(g.local_rank(), ch.slot);
  size_t copied = chunk.len;
  if (p.oneshot) {
    if (chunk.len) std::memcpy(mine, src, chunk.len * es);
  } else {
    const Span my = aligned_part(chunk.len, g.local_size(), g.local_rank(), es);
    if (my.begin) std::memcpy(mine, src, my.begin * es);
    const size_t tail = my.begin + my.len;
    if (chunk.len > tail) std::memcpy(mine + tail * es, src + tail * es, (chunk.len - tail) * es);
    copied -= my.len;
  }
  if (ctx.stats) ctx.stats->bytes_copied_in.fetch_add(copied * es, std::memory_order_relaxed);
}

// The stage on my reduced slice (at `at`, `len` elements), as the plan says.
void run_stage(const SliceStage* stage, const Job& job, const Plan& p, char* at, size_t len) {
  if (!stage) return;
  Job slice = job;
  slice.buf = at;
  slice.src = nullptr;
  slice.count = len;
  if (p.divide_first) slice.op = RedOp::kSum;
  (*stage)(slice);
}

// Steps 3-4 of chunk c, after its copy-in and header check.
void finish_chunk(ShmContext& ctx, const ShmChunk& ch, const Job& job, const Plan& p, size_t c,
                  const ShmOptions& o, const SliceStage* stage) {
  ShmGroup& g = ctx.group;
  const int L = g.local_size(), me = g.local_rank();
  const size_t es = job.esize();
  const Span chunk = chunk_of(job, p, c);
  const char* src = static_cast<const char*>(job.src ? job.src : job.buf) + chunk.begin * es;
  char* out = job.at(chunk.begin);
  char* mine = g.slot(me, ch.slot);
  std::vector<const void*> srcs(L);
  if (p.oneshot) {
    for (int r = 0; r < L; ++r) srcs[r] = g.slot(r, ch.slot);
    if (chunk.len) reduce_many(out, srcs.data(), L, chunk.len, job.dtype, job.op, job.divisor, o.threads);
    g.publish(&ShmControl::reduced, ch.k);
    g.publish(&ShmControl::done, ch.k);
    return;
  }
  const Span my = aligned_part(chunk.len, L, me, es);
  for (int r = 0; r < L; ++r) srcs[r] = g.slot(r, ch.slot) + my.begin * es;
  srcs[me] = src + my.begin * es;
  if (my.len) reduce_many(mine + my.begin * es, srcs.data(), L, my.len, job.dtype, p.local_op, p.local_div, o.threads);
  run_stage(stage, job, p, mine + my.begin * es, my.len);
  g.publish(&ShmControl::reduced, ch.k);
  // My slice first, while the peers may still be in their stages (nobody reads my input).
  auto copy_out = [&](int r) {
    const Span sl = aligned_part(chunk.len, L, r, es);
    if (sl.len) std::memcpy(out + sl.begin * es, g.slot(r, ch.slot) + sl.begin * es, sl.len * es);
  };
  copy_out(me);
  g.wait_all(&ShmControl::reduced, ch.k, "reduce-scatter", ctx.header, ctx.deadline, ctx.poll);
  for (int r = 0; r < L; ++r)
    if (r != me) copy_out(r);
  g.publish(&ShmControl::done, ch.k);
}

enum class Inputs { kCopied, kRegistered, kMixed };

// From every rank's header for `slot`: the same answer on every rank.
Inputs registered_inputs(const ShmGroup& g, int slot) {
  const Header& first = g.ctrl(0).header[slot];
  int registered = 0;
  bool same_offset = true;
  for (int r = 0; r < g.local_size(); ++r) {
    const Header& h = g.ctrl(r).header[slot];
    registered += h.reg != 0;
    same_offset = same_offset && h.reg_offset == first.reg_offset;
  }
  if (registered == 0) return Inputs::kCopied;
  return registered == g.local_size() && same_offset ? Inputs::kRegistered : Inputs::kMixed;
}

// The registered buffers themselves, no slots: in every chunk each rank reduces its slice from
// every rank's buffer and writes the result back into every buffer. No other rank reads or
// writes that slice anywhere, so nobody waits between chunks; one wait at the end keeps the
// caller from reusing its buffer before every peer has written its slices there. `ch` is chunk
// 1's number (headers checked); the call takes no other.
void zero_copy(ShmContext& ctx, const ShmChunk& ch, const Job& job, const Plan& p, const ShmOptions& o,
               const SliceStage* stage) {
  ShmGroup& g = ctx.group;
  const int L = g.local_size(), me = g.local_rank();
  const size_t es = job.esize(), bytes = job.count * es;
  std::vector<char*> bufs(L);
  for (int r = 0; r < L; ++r) {
    const Header& h = g.ctrl(r).header[ch.slot];
    bufs[r] = r == me ? static_cast<char*>(job.buf) : g.peer_registration(r, h.reg, h.reg_offset + bytes) + h.reg_offset;
  }
  // Blocks of my slice small enough that what was just reduced is still in cache when it is
  // copied to the peers (the stage, when there is one, takes the whole slice of a chunk).
  const size_t block = stage ? SIZE_MAX : std::max<size_t>(1, (256 << 10) / es);
  std::vector<const void*> srcs(L);
  for (size_t c = 0; c < p.nchunks; ++c) {
    const Span chunk = chunk_of(job, p, c);
    const Span my = aligned_part(chunk.len, L, me, es);
    for (size_t b = 0; b < my.len; b += block) {
      const size_t at = (chunk.begin + my.begin + b) * es, n = std::min(block, my.len - b);
      for (int r = 0; r < L; ++r) srcs[r] = bufs[r] + at;
      reduce_many(bufs[me] + at, srcs.data(), L, n, job.dtype, p.local_op, p.local_div, o.threads);  // in place
      run_stage(stage, job, p, bufs[me] + at, n);
      for (int r = 0; r < L; ++r)
        if (r != me) std::memcpy(bufs[r] + at, bufs[me] + at, n * es);
    }
  }
  g.publish(&ShmControl::reduced, ch.k);
  g.publish(&ShmControl::done, ch.k);
  g.wait_all(&ShmControl::done, ch.k, "zero-copy", ctx.header, ctx.deadline, ctx.poll);
  if (ctx.stats) ctx.stats->zero_copy_calls.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

void shm_allreduce(ShmContext& ctx, const Job& job, const ShmOptions& o, const SliceStage* stage) {
  ShmGroup& g = ctx.group;
  const Plan p = make_plan(g, job, o, stage);
  size_t c = 0;
  if (job.count > 0) {
    // Chunk 1's headers decide whether the inputs are read in place; a registered rank has
    // nothing to copy until they say otherwise.
    const ShmChunk ch = begin_chunk(ctx);
    if (ctx.header.reg == 0) copy_in(ctx, ch, job, p, 0);
    publish_filled(ctx, ch);
    switch (registered_inputs(g, ch.slot)) {
      case Inputs::kRegistered: return zero_copy(ctx, ch, job, p, o, stage);
      case Inputs::kCopied:
        finish_chunk(ctx, ch, job, p, 0, o, stage);
        c = 1;
        break;
      case Inputs::kMixed:  // chunk 1 carried only headers: every rank copies, from chunk 1 again
        g.publish(&ShmControl::reduced, ch.k);
        g.publish(&ShmControl::done, ch.k);
        break;
    }
  }
  for (; c < p.nchunks; ++c) {
    const ShmChunk ch = begin_chunk(ctx);
    copy_in(ctx, ch, job, p, c);
    publish_filled(ctx, ch);
    finish_chunk(ctx, ch, job, p, c, o, stage);
  }
  if (ctx.stats) ctx.stats->copying_calls.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace far
