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

// This process's pid namespace: pids are only comparable inside one.
unsigned long pid_namespace() {
  struct stat st {};
  return stat("/proc/self/ns/pid", &st) == 0 ? static_cast<unsigned long>(st.st_ino) : 0;
}

std::string random_suffix() {
  std::random_device rd;  // the kernel's entropy: other local users cannot predict the name
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%08x%08x", rd(), rd());
  return buf;
}

// Our segments (fastallreduce_<tag>_<pidns>_<pid>_<rank>_<random>) whose creator, in our pid
// namespace, is dead: a rank killed between creating and unlinking its segment left them.
void remove_stale_segments() {
  DIR* d = opendir("/dev/shm");
  if (!d) return;
  const unsigned long ns = pid_namespace();
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind("fastallreduce_", 0) != 0) continue;
    std::vector<std::string> parts;
    std::stringstream ss(name);
    for (std::string p; std::getline(ss, p, '_');) parts.push_back(p);
    if (parts.size() < 6) continue;
    const std::string& pid_s = parts[parts.size() - 3];
    const std::string& ns_s = parts[parts.size() - 4];
    if (ns_s != std::to_string(ns) || pid_s.empty() || pid_s.find_first_not_of("0123456789") != std::string::npos)
      continue;
    struct stat st {};
    const std::string path = "/dev/shm/" + name;
    if (stat(path.c_str(), &st) != 0 || st.st_uid != geteuid()) continue;
    if (!process_alive(std::atoi(pid_s.c_str()))) shm_unlink(("/" + name).c_str());
  }
  closedir(d);
}

// Maps a peer's segment only if it is ours to trust: owned by our effective user, readable and
// writable by nobody else, and as large as a segment must be (a short file is a SIGBUS later).
void* map_peer(const std::string& name, size_t bytes, int local_rank) {
  if (name.rfind("/fastallreduce_", 0) != 0 || name.find('/', 1) != std::string::npos)
    throw CommError("fastallreduce: local rank " + std::to_string(local_rank) + " published an invalid segment name");
  int fd = shm_open(name.c_str(), O_RDWR | O_NOFOLLOW, 0);
  if (fd < 0) throw CommError(sys_error("fastallreduce: cannot open local rank " + std::to_string(local_rank) + "'s segment " + name));
  struct stat st {};
  std::string bad;
  if (fstat(fd, &st) != 0) bad = sys_error("fstat failed");
  else if (st.st_uid != geteuid()) bad = "it is owned by uid " + std::to_string(st.st_uid) + ", not by us";
  else if (st.st_mode & 077) bad = "its mode lets other users read or write it";
  else if (static_cast<size_t>(st.st_size) < bytes)
    bad = "it has " + std::to_string(st.st_size) + " bytes, less than " + std::to_string(bytes);
  if (!bad.empty()) {
    close(fd);
    throw CommError("fastallreduce: refusing local rank " + std::to_string(local_rank) + "'s segment " + name + ": " + bad);
  }
  void* q = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (q == MAP_FAILED) throw CommError(sys_error("fastallreduce: mmap of " + name + " failed"));
  return q;
}

// A test failpoint: FASTALLREDUCE_FAILPOINT=<name> ends the process there (as a kill would).
void failpoint(const char* name) {
  const char* fp = std::getenv("FASTALLREDUCE_FAILPOINT");
  if (fp && std::strcmp(fp, name) == 0) _exit(86);
}

}  // namespace

void verify_peer_segment(const std::string& name, size_t bytes) { munmap(map_peer(name, bytes, -1), bytes); }

ShmGroup::ShmGroup(int local_rank, ShmPeers peers, c10::intrusive_ptr<c10d::Store> store,
                   const std::string& tag, size_t slot_bytes, std::chrono::milliseconds timeout)
    : me_(local_rank), peers_(std::move(peers)), slot_bytes_((slot_bytes + 4095) & ~size_t(4095)) {
  const int n = static_cast<int>(peers_.pids.size());
  seg_bytes_ = kCtrlBytes + 2 * slot_bytes_;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  spin_ = static_cast<unsigned>(n) <= cores;
  base_.assign(n, nullptr);
  remove_stale_segments();
  my_name_ = "/fastallreduce_" + tag + "_" + std::to_string(pid_namespace()) + "_" + std::to_string(getpid()) + "_" +
             std::to_string(me_) + "_" + random_suffix();
  int fd = shm_open(my_name_.c_str(), O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW, 0600);
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
    failpoint("shm_created");
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
      base_[r] = static_cast<char*>(map_peer(name, seg_bytes_, r));
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
         << " [shared-memory " << phase << "]; ranks that did not arrive: [";
      for (size_t i = 0; i < behind.size(); ++i) os << (i ? ", " : "") << peers_.group_ranks[behind[i]];
      os << "]";
      throw CommTimeoutError(os.str());
    }
    poll();
  }
}

}  // namespace far
