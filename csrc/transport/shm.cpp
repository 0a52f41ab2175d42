#include "transport/shm.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <thread>

#include "engine/errors.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define FAR_PAUSE() _mm_pause()
#else
#define FAR_PAUSE() std::atomic_thread_fence(std::memory_order_seq_cst)
#endif

namespace far {
namespace {

constexpr uint64_t kMagic = 0x5348464153544152ull;
constexpr size_t kCtrlBytes = 4096;
static_assert(sizeof(ShmControl) <= kCtrlBytes, "control block fits its page");

using Clock = std::chrono::steady_clock;

bool reached(uint32_t v, uint32_t target) { return static_cast<int32_t>(v - target) >= 0; }

void futex_wait(std::atomic<uint32_t>* addr, uint32_t expected, int timeout_us) {
  timespec ts{timeout_us / 1000000, (timeout_us % 1000000) * 1000};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT, expected, &ts, nullptr, 0);
}
void futex_wake(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

std::string sys_error(const std::string& what) { return what + ": " + std::strerror(errno); }

// A killed process stays a zombie until its parent reaps it, and kill(pid, 0) still succeeds
// then: read its state too.
bool process_alive(int pid) {
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  FILE* f = std::fopen(path, "r");
  if (!f) return true;  // no procfs: trust kill()
  char buf[512];
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = 0;
  const char* close_paren = std::strrchr(buf, ')');
  if (!close_paren || close_paren[1] == 0) return true;
  const char state = close_paren[2];
  return state != 'Z' && state != 'X';
}

}  // namespace

ShmGroup::ShmGroup(int local_rank, ShmPeers peers, c10::intrusive_ptr<c10d::Store> store,
                   const std::string& tag, size_t slot_bytes, std::chrono::milliseconds timeout)
    : me_(local_rank), peers_(std::move(peers)), slot_bytes_((slot_bytes + 4095) & ~size_t(4095)) {
  const int n = static_cast<int>(peers_.pids.size());
  seg_bytes_ = kCtrlBytes + 2 * slot_bytes_;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  spin_ = static_cast<unsigned>(n) <= cores;
  base_.assign(n, nullptr);
  my_name_ = "/fastallreduce_" + tag + "_" + std::to_string(getpid()) + "_" + std::to_string(me_);
  int fd = shm_open(my_name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) throw CommError(sys_error("fastallreduce: shm_open(" + my_name_ + ") failed"));
  bool linked = true;
  auto cleanup = [&] {
    if (linked) shm_unlink(my_name_.c_str());
    linked = false;
    for (auto& b : base_)
      if (b) munmap(b, seg_bytes_), b = nullptr;
  };
  try {
    // posix_fallocate reserves the pages now: a full /dev/shm is this error, not a later SIGBUS.
    int err = posix_fallocate(fd, 0, static_cast<off_t>(seg_bytes_));
    if (err != 0) {
      close(fd);
      errno = err;
      throw CommError(sys_error("fastallreduce: cannot allocate " + std::to_string(seg_bytes_) +
                                " bytes of shared memory in /dev/shm (is it full?)"));
    }
    void* p = mmap(nullptr, seg_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) throw CommError(sys_error("fastallreduce: mmap of own segment failed"));
    base_[me_] = static_cast<char*>(p);
    auto* c = new (p) ShmControl();
    c->pid = getpid();
    c->magic = kMagic;
    // Keys are per host (named after the host's first rank): every host builds its own group.
    const std::string pre = "shm/" + std::to_string(peers_.group_ranks[0]) + "/";
    store->set(pre + "name/" + std::to_string(me_), std::vector<uint8_t>(my_name_.begin(), my_name_.end()));
    for (int r = 0; r < n; ++r) {
      if (r == me_) continue;
      const std::string key = pre + "name/" + std::to_string(r);
      store->wait({key}, timeout);
      auto v = store->get(key);
      std::string name(v.begin(), v.end());
      int pfd = shm_open(name.c_str(), O_RDWR, 0600);
      if (pfd < 0) throw CommError(sys_error("fastallreduce: cannot open local rank " + std::to_string(r) + "'s segment " + name));
      void* q = mmap(nullptr, seg_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, pfd, 0);
      close(pfd);
      if (q == MAP_FAILED) throw CommError(sys_error("fastallreduce: mmap of " + name + " failed"));
      base_[r] = static_cast<char*>(q);
      if (ctrl(r).magic != kMagic) throw CommError("fastallreduce: segment " + name + " is not initialised");
    }
    // Everyone has mapped everyone: names are no longer needed.
    store->add(pre + "attached", 1);
    const auto until = Clock::now() + timeout;
    while (store->add(pre + "attached", 0) < n) {
      if (Clock::now() > until) throw CommTimeoutError("fastallreduce: timed out waiting for local ranks to map shared memory");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    shm_unlink(my_name_.c_str());
    linked = false;
  } catch (...) {
    cleanup();
    throw;
  }
}

ShmGroup::~ShmGroup() {
  for (auto& b : base_)
    if (b) munmap(b, seg_bytes_);
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
         << " [shared-memory " << phase << "]; ranks that did not arrive: [";
      for (size_t i = 0; i < behind.size(); ++i) os << (i ? ", " : "") << peers_.group_ranks[behind[i]];
      os << "]";
      throw CommTimeoutError(os.str());
    }
    poll();
  }
}

}  // namespace far
