#include "transport/shm.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <dirent.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <thread>

#include "common/errors.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define FAR_PAUSE() _mm_pause()
#else
#define FAR_PAUSE() std::atomic_thread_fence(std::memory_order_seq_cst)
#endif

namespace far {
namespace {

constexpr uint64_t kMagic = 0x5348464153544152ull;
constexpr size_t kCtrlBytes = 16384;
static_assert(sizeof(ShmControl) <= kCtrlBytes, "control block fits its pages");

using Clock = std::chrono::steady_clock;

bool reached(uint32_t v, uint32_t target) { return static_cast<int32_t>(v - target) >= 0; }

void futex_wait(std::atomic<uint32_t>* addr, uint32_t expected, int timeout_us) {
  timespec ts{timeout_us / 1000000, (timeout_us % 1000000) * 1000};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT, expected, &ts, nullptr, 0);
}
void futex_wake(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

}  // namespace

void verify_peer_segment(const std::string& name, size_t bytes) { munmap(map_peer_segment(name, bytes, -1), bytes); }

ShmGroup::ShmGroup(int local_rank, ShmPeers peers, c10::intrusive_ptr<c10d::Store> store,
                   const std::string& tag, size_t slot_bytes, std::chrono::milliseconds timeout)
    : me_(local_rank), peers_(std::move(peers)), slot_bytes_((slot_bytes + 4095) & ~size_t(4095)) {
  const int n = static_cast<int>(peers_.pids.size());
  seg_bytes_ = kCtrlBytes + 2 * slot_bytes_;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  spin_ = static_cast<unsigned>(n) <= cores;
  base_.assign(n, nullptr);
  remove_stale_segments();
  // Keys are per host (named after the host's first rank): every host builds its own group.
  const std::string pre = "shm/" + std::to_string(peers_.group_ranks[0]) + "/";
  auto publish_name = [&](const std::string& value) {
    store->set(pre + "name/" + std::to_string(me_), std::vector<uint8_t>(value.begin(), value.end()));
  };
  try {
    own_ = std::make_unique<OwnSegment>(tag, me_, seg_bytes_);
  } catch (const std::exception& e) {
    // A /dev/shm too small for the copying path: the local peers, waiting for this rank's segment
    // name, get the reason instead ("!" marks it) and raise at once, as this rank does.
    const std::string why = std::string(e.what()) + "; the copying path needs " + std::to_string(seg_bytes_) +
                            " bytes of /dev/shm per rank (" + std::to_string(n) + " ranks on this host: " +
                            std::to_string(seg_bytes_ * n) +
                            " bytes; a container's default /dev/shm is 64 MB: docker run --shm-size, or a smaller "
                            "FASTALLREDUCE_SHM_SLOT_BYTES)";
    publish_name("!" + why);
    throw CommError(why);
  }
  base_[me_] = own_->data();
  try {
    failpoint("shm_created");
    auto* c = new (own_->data()) ShmControl();
    c->pid = getpid();
    c->magic = kMagic;
    publish_name(own_->name());
    for (int r = 0; r < n; ++r) {
      if (r == me_) continue;
      const std::string key = pre + "name/" + std::to_string(r);
      store->wait({key}, timeout);
      auto v = store->get(key);
      std::string name(v.begin(), v.end());
      if (!name.empty() && name[0] == '!')
        throw CommError("fastallreduce: local rank " + std::to_string(r) + " (rank " +
                        std::to_string(peers_.group_ranks[r]) + ") could not create its shared memory: " +
                        name.substr(1));
      base_[r] = static_cast<char*>(map_peer_segment(name, seg_bytes_, r));
      if (ctrl(r).magic != kMagic) throw CommError("fastallreduce: segment " + name + " is not initialised");
    }
    // Everyone has mapped everyone: names are no longer needed.
    store->add(pre + "attached", 1);
    const auto until = Clock::now() + timeout;
    while (store->add(pre + "attached", 0) < n) {
      if (Clock::now() > until) throw CommTimeoutError("fastallreduce: timed out waiting for local ranks to map shared memory");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    own_->unlink();
  } catch (...) {
    unmap_peers();
    throw;
  }
}

ShmGroup::~ShmGroup() { unmap_peers(); }

void ShmGroup::unmap_peers() {
  for (auto& kv : peer_regs_) munmap(kv.second.data, kv.second.bytes);
  peer_regs_.clear();
  for (int r = 0; r < local_size(); ++r)
    if (r != me_ && base_[r]) munmap(base_[r], seg_bytes_), base_[r] = nullptr;
}

int ShmGroup::aborted_peer() const {
  for (int r = 0; r < local_size(); ++r)
    if (r != me_ && ctrl(r).aborted.load(std::memory_order_acquire)) return r;
  return -1;
}

char* ShmGroup::slot(int r, int s) const { return base_[r] + kCtrlBytes + static_cast<size_t>(s) * slot_bytes_; }

void ShmGroup::publish(ShmCounter ShmControl::*which, uint32_t value) {
  ShmCounter& c = ctrl(me_).*which;
  c.value.store(value, std::memory_order_seq_cst);
  if (c.waiters.load(std::memory_order_seq_cst) != 0) futex_wake(&c.value);
}

void ShmGroup::wait_all(ShmCounter ShmControl::*which, uint32_t target, const char* phase, const Header& h,
                        Clock::time_point deadline, const std::function<void()>& poll) {
  for (int r = 0; r < local_size(); ++r)
    if (r != me_) wait_one(r, which, target, phase, h, deadline, poll);
}

void ShmGroup::wait_one(int r, ShmCounter ShmControl::*which, uint32_t target, const char* phase,
                        const Header& h, Clock::time_point deadline, const std::function<void()>& poll) {
  ShmCounter& c = ctrl(r).*which;
  if (reached(c.value.load(std::memory_order_acquire), target)) return;
  // Phase 1: spin (a peer on another core answers within a microsecond or so).
  if (spin_) {
    const auto spin_until = Clock::now() + std::chrono::microseconds(20);
    for (int i = 0;; ++i) {
      if (reached(c.value.load(std::memory_order_acquire), target)) return;
      FAR_PAUSE();
      if ((i & 63) == 63 && Clock::now() > spin_until) break;
    }
  }
  // Phase 2: yield the core (the peer may be waiting for it), then block on the futex.
  for (int i = 0; i < 16; ++i) {
    sched_yield();
    if (reached(c.value.load(std::memory_order_acquire), target)) return;
  }
  auto next_check = Clock::now();
  for (;;) {
    c.waiters.fetch_add(1, std::memory_order_seq_cst);
    uint32_t v = c.value.load(std::memory_order_seq_cst);
    if (!reached(v, target)) futex_wait(&c.value, v, 5000);
    c.waiters.fetch_sub(1, std::memory_order_seq_cst);
    if (reached(c.value.load(std::memory_order_acquire), target)) return;
    const auto now = Clock::now();
    if (now < next_check) continue;
    next_check = now + std::chrono::milliseconds(20);
    std::vector<int> behind;
    for (int q = 0; q < local_size(); ++q)
      if (q != me_ && !reached((ctrl(q).*which).value.load(), target)) behind.push_back(q);
    for (int q : behind) {
      if (!process_alive(peers_.pids[q])) {
        std::ostringstream os;
        os << "fastallreduce: rank " << peers_.group_ranks[q] << " (pid " << peers_.pids[q]
           << ") died during " << h.describe() << " [shared-memory " << phase << "]";
        throw CommError(os.str());
      }
    }
    if (now >= deadline) {
      std::ostringstream os;
      os << "fastallreduce: rank " << peers_.group_ranks[me_] << " timed out in " << h.describe()
         << " [shared-memory " << phase << "]; ranks not through this phase at the deadline: [";
      for (size_t i = 0; i < behind.size(); ++i) os << (i ? ", " : "") << peers_.group_ranks[behind[i]];
      os << "]";
      throw CommTimeoutError(os.str());
    }
    poll();
  }
}

}  // namespace far
