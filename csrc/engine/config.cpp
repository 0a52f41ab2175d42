#include "engine/config.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "common/errors.h"
#include "common/knobs.h"

namespace far {
namespace {

using Knob = knobs::Numeric;
// The timeout is an argument, not a variable: checked the same way, named as the argument.
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
     << c.hier_slot_bytes << ' ' << static_cast<int>(c.default_algo);
  return os.str();
}

CommConfig deserialize(const std::string& s) {
  std::istringstream is(s);
  CommConfig c;
  int idle = 0, algo = 0;
  is >> c.timeout_ms >> c.algo.chunk_bytes >> c.algo.window >> c.cost.alpha_us >> c.cost.beta_gbps >>
      c.shm_slot_bytes >> c.shm.oneshot_bytes >> c.shm.chunk_bytes >> idle >> c.cost.shm_stage_us >> c.cost.shm_gbps >>
      c.hier_slot_bytes >> algo;
  c.worker_idle = idle != 0;
  c.default_algo = static_cast<Algo>(algo);
  return c;
}

}  // namespace

CommConfig config_from_env(const ConfigOverrides& o) {
  CommConfig c;
  c.timeout_ms = o.timeout_ms ? static_cast<int64_t>(checked(kTimeout, double(*o.timeout_ms), std::to_string(*o.timeout_ms)))
                              : c.timeout_ms;
  c.cost.alpha_us = env_knob(knobs::ALPHA_US, c.cost.alpha_us);
  c.cost.beta_gbps = env_knob(knobs::BETA_GBPS, c.cost.beta_gbps);
  c.cost.shm_stage_us = env_knob(knobs::SHM_STAGE_US, c.cost.shm_stage_us);
  c.cost.shm_gbps = env_knob(knobs::SHM_GBPS, c.cost.shm_gbps);
  c.algo.chunk_bytes = o.chunk_bytes ? static_cast<size_t>(checked(knobs::CHUNK_BYTES, double(*o.chunk_bytes), std::to_string(*o.chunk_bytes)))
                                     : static_cast<size_t>(env_knob(knobs::CHUNK_BYTES, double(c.algo.chunk_bytes)));
  c.algo.window = static_cast<int>(env_knob(knobs::WINDOW, c.algo.window));
  c.shm_slot_bytes = static_cast<size_t>(env_knob(knobs::SHM_SLOT_BYTES, double(c.shm_slot_bytes)));
  c.hier_slot_bytes = static_cast<size_t>(env_knob(knobs::HIER_SLOT_BYTES, double(c.hier_slot_bytes)));
  c.shm.oneshot_bytes = static_cast<size_t>(env_knob(knobs::SHM_ONESHOT_BYTES, double(c.shm.oneshot_bytes)));
  c.shm.chunk_bytes = static_cast<size_t>(env_knob(knobs::SHM_CHUNK_BYTES, double(c.shm.chunk_bytes)));
  c.worker_idle = env_knob(knobs::WORKER_IDLE, 0) != 0;
  if (o.default_algo) c.default_algo = *o.default_algo;
  // Slots are rounded up to pages; a one-shot message must fit one slot, with two ranks twice
  // the threshold (shm_allreduce), so the threshold is at most half a slot.
  const size_t slot = (c.shm_slot_bytes + 4095) & ~size_t(4095);
  if (2 * c.shm.oneshot_bytes > slot)
    throw value_error(std::string("fastallreduce: ") + knobs::SHM_ONESHOT_BYTES.name + "=" +
                      std::to_string(c.shm.oneshot_bytes) + " must be at most half of " + knobs::SHM_SLOT_BYTES.name +
                      " (" + std::to_string(slot) + ")");
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
