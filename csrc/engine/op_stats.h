// Totals over the calls their caller asked to have counted (the DDP hook's buckets): a step's
// statistics are differences of two readings, taken by the caller without a callback on the
// worker thread. Times are steady_clock (CLOCK_MONOTONIC, Python's time.monotonic_ns) in ns.
#pragma once
#include <cstdint>
#include <mutex>

namespace far {

class OpStats {
 public:
  struct Totals {
    uint64_t ops = 0, bytes = 0;
    uint64_t busy_ns = 0;          // sum over ops of submission to completion
    uint64_t bytes_copied_in = 0;  // what the ops copied into shared memory (0: registered)
    int64_t last_done_ns = 0;      // when the latest op completed
  };
  static int64_t now_ns();
  void record(uint64_t bytes, int64_t submitted_ns, int64_t done_ns, uint64_t copied_in);
  Totals totals() const;

 private:
  mutable std::mutex mu_;
  Totals t_;
};

}  // namespace far
