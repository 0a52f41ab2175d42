// Faults are errors on every rank, never hangs. While an op runs, the watchdog thread watches
// its deadline and polls the store for a peer's abort record or for a peer's rejection of this
// very call; when one fires it records why and interrupts the blocked transport wait, and the
// op's thread raises from poll(). The first failure is published in the store ("abort"), so
// every rank reports the same cause, naming the ranks that never reached the call. Every store
// round trip goes through bounded_store_ (bounded_store.h): a store cut off by a dead link delays
// neither the deadline nor the error by more than a few seconds.
#include <sstream>

#include "common/errors.h"
#include "engine/communicator.h"

namespace far {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kStorePoll = std::chrono::milliseconds(100);
constexpr auto kReportWait = std::chrono::milliseconds(1500);
// A store round trip on the failure path: far above a live store's (milliseconds, even on a
// loaded machine), and short enough that publishing the abort and reporting the missing ranks
// stay well inside the 10 s after the timeout in which every rank must have raised.
constexpr auto kStoreBound = std::chrono::milliseconds(3000);
const std::string kAbortKey = "abort";

std::string to_str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }
std::vector<uint8_t> to_bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

}  // namespace

void throw_fault_record(const std::string& record) {
  const auto bar = record.find('|');
  const std::string kind = record.substr(0, bar), msg = bar == std::string::npos ? record : record.substr(bar + 1);
  if (kind == "mismatch") throw MismatchError(msg);
  if (kind == "timeout") throw CommTimeoutError(msg);
  throw CommError(msg);
}

void Communicator::begin_op(const Header& h) {
  std::lock_guard<std::mutex> lk(wd_mu_);
  cur_ = h;
  // Saturates far below steady_clock's range: the timeout is validated (config.cpp).
  deadline_ = Clock::now() + std::chrono::milliseconds(cfg_.timeout_ms);
  in_op_ = true;
}

void Communicator::end_op() {
  std::lock_guard<std::mutex> lk(wd_mu_);
  in_op_ = false;
  // A deadline that fired as the op was completing: the op did complete, so it is not a fault
  // and the next op must not inherit it.
  int expected = 1;
  if (fired_.compare_exchange_strong(expected, 0)) {
    p2p_->clear_interrupt();
    if (cross_) cross_->clear_interrupt();
  }
}

void Communicator::interrupt_transports() {
  p2p_->interrupt();
  if (cross_) cross_->interrupt();
}

void Communicator::watchdog_loop() {
  pthread_setname_np(pthread_self(), "far-watchdog");
  // What one store poll found: it runs on the store's helper thread while this loop keeps
  // watching the deadline, so a store that stopped answering never holds the deadline back.
  struct Found {
    uint64_t seq = 0;
    int fire = 0;
    std::string record;
  };
  std::shared_ptr<Found> found;
  std::future<void> polling;
  auto next_store_poll = Clock::now();
  std::unique_lock<std::mutex> lk(wd_mu_);
  while (!wd_stop_) {
    wd_cv_.wait_for(lk, std::chrono::milliseconds(20));
    if (wd_stop_) break;
    if (!in_op_ || fired_ || aborted_) continue;
    const auto now = Clock::now();
    if (now >= deadline_) {
      fired_ = 1;
      interrupt_transports();
      continue;
    }
    if (polling.valid()) {
      if (polling.wait_for(std::chrono::seconds(0)) != std::future_status::ready) continue;
      try {
        polling.get();
      } catch (const std::exception& e) {
        found->fire = 3;
        found->record = std::string("fault|fastallreduce: rank ") + std::to_string(rank_) +
                        " lost the store (is rank 0 dead?): " + e.what();
      }
      if (found->fire && cur_.seq == found->seq) {
        fired_record_ = found->record;
        fired_ = found->fire;
        interrupt_transports();
        continue;
      }
    }
    if (now < next_store_poll) continue;
    next_store_poll = now + kStorePoll;
    found = std::make_shared<Found>();
    found->seq = cur_.seq;
    try {
      polling = bounded_store_->start([found, desc = cur_.describe()](c10d::Store& s) {
        const std::string reject_key = "reject/" + std::to_string(found->seq);
        if (s.check({kAbortKey})) {
          found->record = to_str(s.get(kAbortKey));
          found->fire = 2;
        } else if (s.check({reject_key})) {
          found->record = "mismatch|fastallreduce: " + desc + " was rejected by " + to_str(s.get(reject_key));
          found->fire = 4;
        }
      });
    } catch (const StoreLost&) {
      // The failure path found the store dead already: the deadline stays this loop's only job.
    }
  }
}

void Communicator::poll() {
  const int fired = fired_.load();
  if (fired == 1) fail_timeout();
  if (fired == 4) throw_fault_record(fired_record_);  // published by execute(), as this rank's failure
  if (fired >= 2) {
    {
      std::lock_guard<std::mutex> lk(reason_mu_);
      if (reason_.empty()) reason_ = fired_record_.substr(fired_record_.find('|') + 1);
    }
    aborted_ = true;
    if (shm_) shm_->mark_aborted();
    const std::string report = fired == 2 ? missing_ranks_report() : "";
    throw_fault_record(fired_record_ + report);
  }
  if (aborted_) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
  if (Clock::now() >= deadline_) fail_timeout();
}

void Communicator::fail_timeout() {
  std::ostringstream os;
  os << "fastallreduce: rank " << rank_ << " timed out after " << cfg_.timeout_ms / 1000.0 << " s in "
     << cur_.describe();
  publish_abort("timeout|" + os.str());
  throw CommTimeoutError(os.str() + missing_ranks_report());
}

std::string Communicator::publish_abort(const std::string& record) {
  {
    std::lock_guard<std::mutex> lk(reason_mu_);
    if (reason_.empty()) reason_ = record.substr(record.find('|') + 1);
  }
  aborted_ = true;
  // An abandoned receive may still land in these: keep them alive forever.
  staging_.leak();
  hdr_staging_.leak();
  std::string first = record;
  try {
    first = bounded_store_->call(
        [record](c10d::Store& s) { return to_str(s.compareSet(kAbortKey, {}, to_bytes(record))); }, kStoreBound);
  } catch (const std::exception&) {
    // The store is gone (rank 0 died) or cut off: peers find out through their own deadlines.
  }
  // Local peers learn of the abort from shared memory only now, so that the record they then
  // publish loses to this one and they report the first failure, not the echo they saw.
  if (shm_) shm_->mark_aborted();
  return first;
}

std::string Communicator::missing_ranks_report() {
  report_ = find_missing_ranks();
  return report_;
}

std::string Communicator::find_missing_ranks() {
  // Each rank that fails publishes which collective it was in; after a short wait the ranks
  // that did not publish that number are the ones that never arrived (dead, hung, or calling
  // something else).
  staging_.leak();
  hdr_staging_.leak();
  const std::string seq = std::to_string(cur_.seq);
  try {
    bounded_store_->call(
        [rank = rank_, seq](c10d::Store& s) { s.set("status/" + std::to_string(rank), to_bytes(seq)); }, kStoreBound);
    std::vector<int> missing;
    const auto until = Clock::now() + kReportWait;
    for (;;) {
      missing = bounded_store_->call(
          [size = size_, seq](c10d::Store& s) {
            std::vector<int> m;
            for (int r = 0; r < size; ++r) {
              const std::string key = "status/" + std::to_string(r);
              if (!s.check({key}) || to_str(s.get(key)) != seq) m.push_back(r);
            }
            return m;
          },
          kStoreBound);
      if (missing.empty() || Clock::now() >= until) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    // Every rank is in the call: one that a phase above still waited for was late (starved of
    // CPU, or stuck inside it), not absent.
    if (missing.empty()) return " [every rank reached this collective; none is missing, a late one was slow or stuck in it]";
    return ranks_report("ranks that did not reach " + std::string(kind_name(static_cast<Kind>(cur_.kind))) + " #" +
                        seq, missing);
  } catch (const StoreLost&) {
    // Cut off from the store's host: from here no rank on another host can be reached either
    // (our transport waits on them timed out too). Name them: that is what the user must check.
    std::vector<int> others;
    for (int r = 0; r < size_; ++r)
      if (topo_.host_of_rank[r] != topo_.host) others.push_back(r);
    if (!others.empty()) return ranks_report("ranks unreachable from this host (the store too)", others);
    return " [store unreachable: could not tell which ranks are missing]";
  } catch (const std::exception&) {
    return " [store unreachable: could not tell which ranks are missing]";
  }
}

std::string Communicator::ranks_report(const std::string& what, const std::vector<int>& ranks) {
  std::ostringstream os;
  os << " [" << what << ": ";
  for (size_t i = 0; i < ranks.size(); ++i) os << (i ? ", " : "") << ranks[i];
  os << "]";
  return os.str();
}

}  // namespace far
