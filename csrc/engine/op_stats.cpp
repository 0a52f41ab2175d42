#include "engine/op_stats.h"

#include <algorithm>
#include <chrono>

namespace far {

int64_t OpStats::now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void OpStats::record(uint64_t bytes, int64_t submitted_ns, int64_t done_ns, uint64_t copied_in) {
  std::lock_guard<std::mutex> g(mu_);
  ++t_.ops;
  t_.bytes += bytes;
  t_.busy_ns += static_cast<uint64_t>(std::max<int64_t>(0, done_ns - submitted_ns));
  t_.bytes_copied_in += copied_in;
  t_.last_done_ns = std::max(t_.last_done_ns, done_ns);
}

OpStats::Totals OpStats::totals() const {
  std::lock_guard<std::mutex> g(mu_);
  return t_;
}

}  // namespace far
