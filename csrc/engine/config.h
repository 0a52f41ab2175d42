// The engine's configuration: typed knobs read from the environment, each validated against its
// range, then agreed across ranks (rank 0's values apply everywhere, so that every rank makes
// the same choices). One rank's invalid value makes every rank's constructor raise.
#pragma once
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "algorithms/algorithm.h"
#include "algorithms/shm_allreduce.h"

namespace far {

struct CommConfig {
  int64_t timeout_ms = 30 * 60 * 1000;
  AlgoOptions algo;
  CostModel cost;
  ShmOptions shm;
  size_t shm_slot_bytes = 4 << 20;
  // The slot when the ranks span several hosts, where only the hierarchical algorithm uses shared
  // memory and each slot is one chunk (one cross-host allreduce): 64 MiB on 2 x 2 namespaced hosts
  // ran in 157-187 ms with 16 MiB slots against 256 ms with 4 MiB and 438 ms with 1 MiB.
  size_t hier_slot_bytes = 16 << 20;
  // Opt-in: run the async worker under SCHED_IDLE (see Communicator::worker_loop for why it is
  // off by default).
  bool worker_idle = false;
  // The algorithm of calls that ask for none (the torch backend's FASTALLREDUCE_BACKEND_ALGORITHM):
  // agreed like the rest, so that ranks whose variable differs still make the same choice.
  Algo default_algo = Algo::kAuto;
};

// Values the constructor's caller sets explicitly (they win over the environment).
struct ConfigOverrides {
  std::optional<int64_t> timeout_ms;
  std::optional<int64_t> chunk_bytes;
  std::optional<Algo> default_algo;
  // An argument error the caller found on this rank: published like an invalid variable.
  std::string local_error;
};

// Longest accepted timeout: far below where steady_clock arithmetic overflows.
constexpr int64_t kMaxTimeoutMs = int64_t(366) * 24 * 3600 * 1000;

// Reads and validates this process's environment; throws ArgError (ValueError) naming the
// variable, its value and the allowed range.
CommConfig config_from_env(const ConfigOverrides& o);

// Collective over `size` ranks through `store`: every rank validates its own configuration and
// publishes the outcome; if any rank's is invalid every rank throws (naming that rank and
// variable); otherwise every rank returns rank 0's configuration.
CommConfig agree_config(c10d::Store& store, int rank, int size, const ConfigOverrides& o,
                        std::chrono::milliseconds wait);

}  // namespace far
