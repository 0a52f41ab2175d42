// Shared-memory allreduce among the ranks of one host, optionally with a stage between its
// reduce-scatter and allgather (the hierarchical algorithm plugs the cross-host allreduce in).
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>

#include "algorithms/algorithm.h"
#include "common/header.h"
#include "transport/shm.h"

namespace far {

struct ShmOptions {
  size_t oneshot_bytes = 32 * 1024;  // at or below: every rank reduces the whole message
  // Chunk of the flat shared-memory path for messages larger than a slot. Small enough that a
  // chunk's input, its slot and the peers' slices stay in cache between copy-in, reduce and
  // copy-out: 512 KiB ran 64 MiB in 13.6 ms against 17.6 ms with 4 MiB chunks (2 ranks, this
  // machine). The hierarchical path keeps whole slots: each chunk costs a cross-host latency.
  size_t chunk_bytes = 512 * 1024;
  int threads = 1;
};

// What the shared-memory allreduce did (Communicator::stats()).
struct ShmStats {
  std::atomic<uint64_t> bytes_copied_in{0};  // callers' bytes copied into the segments
  std::atomic<uint64_t> copying_calls{0};
  std::atomic<uint64_t> zero_copy_calls{0};
};

struct ShmContext {
  ShmGroup& group;
  const Header& header;
  std::chrono::steady_clock::time_point deadline;
  const std::function<void()>& poll;
  ShmStats* stats = nullptr;
};

// Runs on each chunk's reduced slice (in shared memory) before the allgather. The job it gets
// describes the slice; it must allreduce it in place with the final op and divisor.
using SliceStage = std::function<void(const Job& slice)>;

// Chunk size for a message of `bytes` on the flat path: a message that fits one slot goes as one
// chunk (each chunk costs two waits on the peers, and when backprop keeps every core busy each
// wait costs a reschedule); larger ones move in cache-sized chunks (ShmOptions::chunk_bytes).
inline size_t shm_chunk_bytes(const ShmGroup& g, const ShmOptions& o, size_t bytes) {
  return bytes <= g.slot_bytes() ? g.slot_bytes() : std::min(g.slot_bytes(), std::max<size_t>(o.chunk_bytes, 4096));
}

// The always-on mismatch check: every rank compares every rank's header for `slot` with its
// own, so that every rank sees a mismatch (MismatchError) before any data is read.
void check_shm_headers(ShmContext& ctx, int slot);

// The per-chunk protocol every shared-memory collective shares. begin_chunk: the next chunk's
// number k and slot (k % 2), once every rank is done with chunk k-2 (which used that slot).
// publish_filled: after copying in, publish my header and filled=k, wait for every rank's,
// and compare headers.
struct ShmChunk {
  uint32_t k;
  int slot;
};
ShmChunk begin_chunk(ShmContext& ctx);
void publish_filled(ShmContext& ctx, const ShmChunk& c);

// One chunk that carries only the header: the check that precedes a path that moves its data
// elsewhere (point-to-point, or another backend), in step with every other shared-memory call.
void shm_header_only(ShmContext& ctx);

// In-place allreduce of `job` (job.src is copied in, the result lands in job.buf). When every
// rank's header names a registered input (job.src == job.buf, in memory peers can map) at the
// same offset, nothing is copied in: every rank reduces its slice straight from the peers'
// buffers into its own, then copies the other slices from their owners. The sums are the same,
// in the same order, as on the copying path, so the bits are too.
void shm_allreduce(ShmContext& ctx, const Job& job, const ShmOptions& o, const SliceStage* stage = nullptr);

}  // namespace far
