#include "engine/topology.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include "common/knobs.h"

namespace far {
namespace {

std::string first_line(const char* path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}

std::string inode_of(const char* path) {
  struct stat st {};
  if (stat(path, &st) != 0) return "?";
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
}

}  // namespace

std::string host_identity() {
  char name[256] = {0};
  gethostname(name, sizeof(name) - 1);
  struct stat shm {};
  const std::string shm_dev = stat("/dev/shm", &shm) == 0 ? std::to_string(shm.st_dev) : "?";
  return std::string(name) + "/" + first_line("/proc/sys/kernel/random/boot_id") +
         "/pidns:" + inode_of("/proc/self/ns/pid") + "/shm:" + shm_dev;
}

Topology discover_topology(c10d::Store& store, int rank, int size, const std::optional<std::string>& override_id,
                           std::chrono::milliseconds wait) {
  std::string id = override_id ? *override_id : "";
  if (id.empty()) {
    const char* env = std::getenv(knobs::HOST_ID);
    id = env && *env ? env : host_identity();
  }
  const std::string mine = std::to_string(getpid()) + "|" + id;
  store.set("host/" + std::to_string(rank), std::vector<uint8_t>(mine.begin(), mine.end()));
  std::vector<std::string> keys;
  for (int r = 0; r < size; ++r) keys.push_back("host/" + std::to_string(r));
  store.wait(keys, wait);
  std::vector<std::string> ids(size);
  std::vector<int> pids(size);
  for (int r = 0; r < size; ++r) {
    auto v = store.get(keys[r]);
    std::string s(v.begin(), v.end());
    const auto bar = s.find('|');
    pids[r] = std::atoi(s.substr(0, bar).c_str());
    ids[r] = s.substr(bar + 1);
  }
  Topology t;
  std::vector<std::string> hosts;
  t.host_of_rank.resize(size);
  for (int r = 0; r < size; ++r) {
    auto it = std::find(hosts.begin(), hosts.end(), ids[r]);
    if (it == hosts.end()) it = hosts.insert(hosts.end(), ids[r]);
    t.host_of_rank[r] = static_cast<int>(it - hosts.begin());
  }
  t.num_hosts = static_cast<int>(hosts.size());
  t.host = t.host_of_rank[rank];
  std::vector<int> per_host(t.num_hosts, 0);
  for (int r = 0; r < size; ++r) {
    ++per_host[t.host_of_rank[r]];
    if (t.host_of_rank[r] != t.host) continue;
    if (r == rank) t.local_rank = static_cast<int>(t.local.group_ranks.size());
    t.local.group_ranks.push_back(r);
    t.local.pids.push_back(pids[r]);
  }
  t.uniform = std::all_of(per_host.begin(), per_host.end(), [&](int n) { return n == per_host[0]; });
  return t;
}

}  // namespace far
