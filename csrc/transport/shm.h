// Shared-memory transport between the processes of one host: one POSIX segment per local rank
// (control block + two data slots for double buffering), mapped by every local rank, and the
// counters and waits that order access to them.
//
// Waiting spins briefly (only when ranks do not outnumber cores), then yields, then blocks on a
// futex, so that 4-8 ranks on 2 cores still make progress.
#pragma once
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/header.h"
#include "transport/shm_segment.h"

namespace far {

// A counter written by one rank and read by all; `waiters` tells the writer to wake sleepers.
struct alignas(64) ShmCounter {
  std::atomic<uint32_t> value{0};
  std::atomic<uint32_t> waiters{0};
};

// A registered buffer of the control block's owner: a segment of its own, listed so that peers
// can map it when a collective's header names it. serial 0 marks a free entry.
struct ShmRegEntry {
  std::atomic<uint32_t> serial{0};
  std::atomic<uint32_t> attached{0};  // peers that mapped it; the last one unlinks the name
  uint64_t bytes = 0;
  char name[112] = {};
};
constexpr int kMaxRegistrations = 64;

struct ShmControl {
  uint64_t magic;
  int32_t pid;
  // Set once this rank's communicator is aborted: a peer that finds my data for a chunk must not
  // complete the collective on it as if I had (I have reported a failure for it).
  std::atomic<uint32_t> aborted;
  ShmCounter filled;   // chunk k copied in
  ShmCounter reduced;  // chunk k: my slice reduced (and allreduced across hosts)
  ShmCounter done;     // chunk k: result copied out; my slot may be reused for chunk k+2
  alignas(64) Header header[2];  // the collective each slot's chunk belongs to
  ShmRegEntry regs[kMaxRegistrations];
};

struct ShmPeers {
  std::vector<int> group_ranks;  // group rank of each local rank
  std::vector<int> pids;
};

// Opens, checks and unmaps a peer's segment as ShmGroup does before mapping it: owned by our
// effective user, no permission bits for group or others, at least `bytes` long. Throws
// CommError naming what is wrong (tests and diagnostics).
void verify_peer_segment(const std::string& name, size_t bytes);

class ShmGroup {
 public:
  // Collective over the local ranks: creates this rank's segment, exchanges names through
  // `store`, maps every peer's segment, waits until all have attached, then unlinks its own
  // name so that nothing is left in /dev/shm even if a process dies later.
  ShmGroup(int local_rank, ShmPeers peers, c10::intrusive_ptr<c10d::Store> store, const std::string& tag,
           size_t slot_bytes, std::chrono::milliseconds timeout);
  ~ShmGroup();
  ShmGroup(const ShmGroup&) = delete;
  ShmGroup& operator=(const ShmGroup&) = delete;

  int local_rank() const { return me_; }
  int local_size() const { return static_cast<int>(base_.size()); }
  int group_rank(int local) const { return peers_.group_ranks[local]; }
  size_t slot_bytes() const { return slot_bytes_; }
  ShmControl& ctrl(int r) const { return *reinterpret_cast<ShmControl*>(base_[r]); }
  char* slot(int r, int s) const;

  void publish(ShmCounter ShmControl::*which, uint32_t value);
  // Waits until every local rank's counter has reached `target`. `poll` runs in slow waits (it
  // throws on abort); past `deadline` throws CommTimeoutError naming the ranks still behind; a
  // dead peer process raises CommError at once.
  void wait_all(ShmCounter ShmControl::*which, uint32_t target, const char* phase, const Header& h,
                std::chrono::steady_clock::time_point deadline, const std::function<void()>& poll);

  uint32_t next_chunk() { return ++chunks_; }
  // Marks this rank aborted (see ShmControl::aborted); a local rank that is, or -1.
  void mark_aborted() { ctrl(me_).aborted.store(1, std::memory_order_seq_cst); }
  int aborted_peer() const;

  // -- registered buffers (shm_registry.cpp) --
  // Lists one of my registrations in my control block (any thread); the entry, or -1 when the
  // table is full. unlist_registration frees the entry.
  int list_registration(uint32_t serial, const OwnSegment& seg);
  void unlist_registration(int entry);
  // Local rank r's registration `serial`, mapped at its first use and cached; it must hold at
  // least `bytes`. Mappings of registrations their owner has released are dropped here too.
  // Throws CommError when r lists no such registration. Only the collective's thread calls it.
  char* peer_registration(int r, uint32_t serial, size_t bytes);

 private:
  struct PeerMapping {
    char* data;
    size_t bytes;
  };
  void unmap_peers();
  void drop_released_mappings();
  void wait_one(int r, ShmCounter ShmControl::*which, uint32_t target, const char* phase, const Header& h,
                std::chrono::steady_clock::time_point deadline, const std::function<void()>& poll);
  int me_;
  ShmPeers peers_;
  size_t slot_bytes_, seg_bytes_;
  std::vector<char*> base_;
  std::unique_ptr<OwnSegment> own_;
  std::mutex reg_mu_;  // my registration table: written from any thread
  std::map<std::pair<int, uint32_t>, PeerMapping> peer_regs_;
  uint32_t chunks_ = 0;
  bool spin_;
};

}  // namespace far
