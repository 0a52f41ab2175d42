// Which ranks share a host and can share memory, learned at construction by exchanging host
// identities through the communicator's store (never guessed from the environment alone).
#pragma once
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "transport/shm.h"

namespace far {

struct Topology {
  int local_rank = 0;  // my index among the ranks of my host
  ShmPeers local;      // group ranks and pids of the ranks on this host (local rank order)
  int num_hosts = 1;
  int host = 0;         // my host's index (hosts numbered by their lowest rank)
  bool uniform = true;  // same number of ranks on every host
  std::vector<int> host_of_rank;
};

// Processes that can share memory and see each other's pids: hostname, kernel boot id, pid
// namespace and the device of /dev/shm. Two containers sharing the host's network and IPC
// namespaces but not its pid namespace or /dev/shm differ here.
std::string host_identity();

// Collective over `size` ranks: exchanges identities (`override_id` replaces this process's,
// e.g. to simulate hosts) and pids, and returns the topology seen from `rank`.
Topology discover_topology(c10d::Store& store, int rank, int size, const std::optional<std::string>& override_id,
                           std::chrono::milliseconds wait);

}  // namespace far
