#include "transport/shm_segment.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <vector>

#include "common/errors.h"
#include "common/knobs.h"

namespace far {
namespace {

std::string sys_error(const std::string& what) { return what + ": " + std::strerror(errno); }

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

}  // namespace

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

void* map_peer_segment(const std::string& name, size_t bytes, int local_rank) {
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

void failpoint(const char* name) {
  const char* fp = std::getenv(knobs::FAILPOINT);
  if (fp && std::strcmp(fp, name) == 0) _exit(86);
}

OwnSegment::OwnSegment(const std::string& tag, int local_rank, size_t bytes) : bytes_(bytes), owner_pid_(getpid()) {
  name_ = "/fastallreduce_" + tag + "_" + std::to_string(pid_namespace()) + "_" + std::to_string(owner_pid_) + "_" +
          std::to_string(local_rank) + "_" + random_suffix();
  int fd = shm_open(name_.c_str(), O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW, 0600);
  if (fd < 0) throw CommError(sys_error("fastallreduce: shm_open(" + name_ + ") failed"));
  linked_ = true;
  // posix_fallocate reserves the pages now: a full /dev/shm is this error, not a later SIGBUS.
  const int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes_));
  void* p = err == 0 ? mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  const int map_errno = errno;
  close(fd);
  if (p == MAP_FAILED) {
    unlink();
    errno = err != 0 ? err : map_errno;
    throw CommError(sys_error(err != 0 ? "fastallreduce: cannot allocate " + std::to_string(bytes_) +
                                             " bytes of shared memory in /dev/shm (is it full?)"
                                       : "fastallreduce: mmap of own segment failed"));
  }
  data_ = static_cast<char*>(p);
}

OwnSegment::~OwnSegment() {
  unlink();
  if (data_) munmap(data_, bytes_);
}

void OwnSegment::unlink() {
  if (linked_ && getpid() == owner_pid_) shm_unlink(name_.c_str());
  linked_ = false;
}

}  // namespace far
