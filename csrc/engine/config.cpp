#include "engine/config.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "common/errors.h"

namespace far {
namespace {

struct Knob {
  const char* name;
  double lo, hi;
  bool integer;
};

// Each knob: name, inclusive range, integer or not. Documented in docs/README (environment).
constexpr Knob kAlpha{"FASTALLREDUCE_ALPHA_US", 1e-3, 1e7, false};
constexpr Knob kBeta{"FASTALLREDUCE_BETA_GBPS", 1e-4, 1e4, false};
constexpr Knob kShmStage{"FASTALLREDUCE_SHM_STAGE_US", 0, 1e7, false};
constexpr Knob kShmGbps{"FASTALLREDUCE_SHM_GBPS", 1e-4, 1e4, false};
constexpr Knob kChunk{"FASTALLREDUCE_CHUNK_BYTES", 64, double(1 << 30), true};
constexpr Knob kWindow{"FASTALLREDUCE_WINDOW", 1, 64, true};
constexpr Knob kSlot{"FASTALLREDUCE_SHM_SLOT_BYTES", 4096, double(1 << 30), true};
constexpr Knob kHierSlot{"FASTALLREDUCE_HIER_SLOT_BYTES", 4096, double(1 << 30), true};
constexpr Knob kOneshot{"FASTALLREDUCE_SHM_ONESHOT_BYTES", 0, double(1 << 30), true};
constexpr Knob kShmChunk{"FASTALLREDUCE_SHM_CHUNK_BYTES", 4096, double(1 << 30), true};
constexpr Knob kIdle{"FASTALLREDUCE_WORKER_IDLE", 0, 1, true};
constexpr Knob kTimeout{"timeout (ms)", 1, double(kMaxTimeoutMs), true};

std::string range_of(const Knob& k) {
  std::ostringstream os;
  if (k.integer)
    os << "an integer in [" << static_cast<long long>(k.lo) << ", " << static_cast<long long>(k.hi) << "]";
  else
    os << "a number in [" << k.lo << ", " << k.hi << "]";
  return os.str();
}

double checked(const Knob& k, double v, const std::string& shown) {
  if (!std::isfinite(v) || v < k.lo || v > k.hi || (k.integer && v != std::floor(v)))
    throw value_error(std::string("fastallreduce: ") + k.name + "=" + shown + " is out of range: it must be " +
                      range_of(k));
  return v;
}

// The knob's value from the environment, or `def` when unset or empty.
double env_knob(const Knob& k, double def) {
  const char* raw = std::getenv(k.name);
  if (!raw || !*raw) return def;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(raw, &end);
  while (end && (*end == ' ' || *end == '\t')) ++end;
  if (end == raw || (end && *end) || errno == ERANGE)
    throw value_error(std::string("fastallreduce: ") + k.name + "=" + raw + " is not a number; it must be " +
                      range_of(k));
  return checked(k, v, raw);
}

std::string serialize(const CommConfig& c) {
  std::ostringstream os;
  os.precision(17);
  os << c.timeout_ms << ' ' << c.algo.chunk_bytes << ' ' << c.algo.window << ' ' << c.cost.alpha_us << ' '
     << c.cost.beta_gbps << ' ' << c.shm_slot_bytes << ' ' << c.shm.oneshot_bytes << ' ' << c.shm.chunk_bytes << ' '
     << (c.worker_idle ? 1 : 0) << ' ' << c.cost.shm_stage_us << ' ' << c.cost.shm_gbps << ' '
     << c.hier_slot_bytes;
  return os.str();
}

CommConfig deserialize(const std::string& s) {
  std::istringstream is(s);
  CommConfig c;
  int idle = 0;
  is >> c.timeout_ms >> c.algo.chunk_bytes >> c.algo.window >> c.cost.alpha_us >> c.cost.beta_gbps >>
      c.shm_slot_bytes >> c.shm.oneshot_bytes >> c.shm.chunk_bytes >> idle >> c.cost.shm_stage_us >> c.cost.shm_gbps >>
      c.hier_slot_bytes;
  c.worker_idle = idle != 0;
  return c;
}

}  // namespace

CommConfig config_from_env(const ConfigOverrides& o) {
  CommConfig c;
  c.timeout_ms = o.timeout_ms ? static_cast<int64_t>(checked(kTimeout, double(*o.timeout_ms), std::to_string(*o.timeout_ms)))
                              : c.timeout_ms;
  c.cost.alpha_us = env_knob(kAlpha, c.cost.alpha_us);
  c.cost.beta_gbps = env_knob(kBeta, c.cost.beta_gbps);
  c.cost.shm_stage_us = env_knob(kShmStage, c.cost.shm_stage_us);
  c.cost.shm_gbps = env_knob(kShmGbps, c.cost.shm_gbps);
  c.algo.chunk_bytes = o.chunk_bytes ? static_cast<size_t>(checked(kChunk, double(*o.chunk_bytes), std::to_string(*o.chunk_bytes)))
                                     : static_cast<size_t>(env_knob(kChunk, double(c.algo.chunk_bytes)));
  c.algo.window = static_cast<int>(env_knob(kWindow, c.algo.window));
  c.shm_slot_bytes = static_cast<size_t>(env_knob(kSlot, double(c.shm_slot_bytes)));
  c.hier_slot_bytes = static_cast<size_t>(env_knob(kHierSlot, double(c.hier_slot_bytes)));
  c.shm.oneshot_bytes = static_cast<size_t>(env_knob(kOneshot, double(c.shm.oneshot_bytes)));
  c.shm.chunk_bytes = static_cast<size_t>(env_knob(kShmChunk, double(c.shm.chunk_bytes)));
  c.worker_idle = env_knob(kIdle, 0) != 0;
  // Slots are rounded up to pages; a one-shot message must fit one slot, with two ranks twice
  // the threshold (shm_allreduce), so the threshold is at most half a slot.
  const size_t slot = (c.shm_slot_bytes + 4095) & ~size_t(4095);
  if (2 * c.shm.oneshot_bytes > slot)
    throw value_error("fastallreduce: FASTALLREDUCE_SHM_ONESHOT_BYTES=" + std::to_string(c.shm.oneshot_bytes) +
                      " must be at most half of FASTALLREDUCE_SHM_SLOT_BYTES (" + std::to_string(slot) + ")");
  return c;
}

CommConfig agree_config(c10d::Store& store, int rank, int size, const ConfigOverrides& o,
                        std::chrono::milliseconds wait) {
  std::string mine;
  try {
    if (!o.local_error.empty()) throw value_error(o.local_error);
    mine = "ok|" + serialize(config_from_env(o));
  } catch (const ArgError& e) {
    mine = std::string("error|") + e.what();
  }
  store.set("cfg/" + std::to_string(rank), std::vector<uint8_t>(mine.begin(), mine.end()));
  std::vector<std::string> keys;
  for (int r = 0; r < size; ++r) keys.push_back("cfg/" + std::to_string(r));
  store.wait(keys, wait);
  std::string rank0;
  for (int r = 0; r < size; ++r) {
    auto v = store.get(keys[r]);
    std::string s(v.begin(), v.end());
    if (s.rfind("error|", 0) == 0)
      throw value_error("fastallreduce: rank " + std::to_string(r) + "'s configuration is invalid: " + s.substr(6));
    if (r == 0) rank0 = s.substr(3);
  }
  return deserialize(rank0);
}

}  // namespace far
