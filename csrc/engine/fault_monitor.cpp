// Every store round trip goes through bounded_store_ (bounded_store.h): a store cut off by a dead
// link delays neither the deadline nor the error by more than a few seconds.
#include "engine/fault_monitor.h"

#include <pthread.h>

#include <future>
#include <sstream>

#include "common/errors.h"
#include "common/types.h"

namespace far {
namespace {

constexpr auto kStorePoll = std::chrono::milliseconds(100);
constexpr auto kReportWait = std::chrono::milliseconds(1500);
// A store round trip on the failure path: far above a live store's (milliseconds, even on a
// loaded machine), and short enough that publishing the abort and reporting the missing ranks
// stay well inside the 10 s after the timeout in which every rank must have raised.
constexpr auto kStoreBound = std::chrono::milliseconds(3000);
const std::string kAbortKey = "abort";

std::string to_str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }
std::vector<uint8_t> to_bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string reject_key(uint64_t seq) { return "reject/" + std::to_string(seq); }

// " [what: 1, 2]"
std::string ranks_report(const std::string& what, const std::vector<int>& ranks) {
  std::ostringstream os;
  os << " [" << what << ": ";
  for (size_t i = 0; i < ranks.size(); ++i) os << (i ? ", " : "") << ranks[i];
  os << "]";
  return os.str();
}

}  // namespace

FaultMonitor::FaultMonitor(c10::intrusive_ptr<c10d::Store> store, int rank, int size, int64_t timeout_ms,
                           std::vector<int> host_of_rank, int host, Hooks hooks)
    : store_(std::move(store)), bounded_store_(std::make_unique<BoundedStore>(store_)), rank_(rank), size_(size),
      timeout_ms_(timeout_ms), host_of_rank_(std::move(host_of_rank)), host_(host), hooks_(std::move(hooks)) {}

FaultMonitor::~FaultMonitor() { stop(); }

void FaultMonitor::start() {
  watchdog_ = std::make_unique<std::thread>([this] { watchdog_loop(); });
}

void FaultMonitor::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (watchdog_ && watchdog_->joinable()) watchdog_->join();
}

std::string FaultMonitor::abort_reason() const {
  std::lock_guard<std::mutex> lk(reason_mu_);
  return reason_;
}

void FaultMonitor::set_reason(const std::string& why) {
  std::lock_guard<std::mutex> lk(reason_mu_);
  if (reason_.empty()) reason_ = why;
}

void FaultMonitor::begin_op(const Header& h) {
  std::lock_guard<std::mutex> lk(mu_);
  cur_ = h;
  // Saturates far below steady_clock's range: the timeout is validated (config.cpp).
  deadline_ = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  in_op_ = true;
}

void FaultMonitor::end_op() {
  std::lock_guard<std::mutex> lk(mu_);
  in_op_ = false;
  // A deadline that fired as the op was completing: the op did complete, so it is not a fault
  // and the next op must not inherit it.
  FailState expected = FailState::kDeadline;
  if (fired_.compare_exchange_strong(expected, FailState::kNone)) run_hook(hooks_.clear_interrupt);
}

void FaultMonitor::watchdog_loop() {
  pthread_setname_np(pthread_self(), "far-watchdog");
  // What one store poll found: it runs on the store's helper thread while this loop keeps
  // watching the deadline, so a store that stopped answering never holds the deadline back.
  struct Found {
    uint64_t seq = 0;
    FailState fire = FailState::kNone;
    Fault fault;
  };
  std::shared_ptr<Found> found;
  std::future<void> polling;
  auto next_store_poll = Clock::now();
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    cv_.wait_for(lk, std::chrono::milliseconds(20));
    if (stop_) break;
    if (!in_op_ || fired_ != FailState::kNone || aborted_) continue;
    const auto now = Clock::now();
    if (now >= deadline_) {
      fired_ = FailState::kDeadline;
      run_hook(hooks_.interrupt);
      continue;
    }
    if (polling.valid()) {
      if (polling.wait_for(std::chrono::seconds(0)) != std::future_status::ready) continue;
      try {
        polling.get();
      } catch (const std::exception& e) {
        found->fire = FailState::kStoreLost;
        found->fault = Fault{FaultKind::kStoreLost, rank_, found->seq,
                             std::string("fastallreduce: rank ") + std::to_string(rank_) +
                                 " lost the store (is rank 0 dead?): " + e.what()};
      }
      if (found->fire != FailState::kNone && cur_.seq == found->seq) {
        fired_fault_ = found->fault;
        fired_ = found->fire;
        run_hook(hooks_.interrupt);
        continue;
      }
    }
    if (now < next_store_poll) continue;
    next_store_poll = now + kStorePoll;
    found = std::make_shared<Found>();
    found->seq = cur_.seq;
    try {
      polling = bounded_store_->start([found, desc = cur_.describe()](c10d::Store& s) {
        const std::string key = reject_key(found->seq);
        if (s.check({kAbortKey})) {
          found->fault = Fault::decode(to_str(s.get(kAbortKey)));
          found->fire = FailState::kPeerAbort;
        } else if (s.check({key})) {
          const Fault rejection = Fault::decode(to_str(s.get(key)));
          found->fault = Fault{FaultKind::kRejected, rejection.rank, found->seq,
                               "fastallreduce: " + desc + " was rejected by rank " + std::to_string(rejection.rank) +
                                   ": " + rejection.message};
          found->fire = FailState::kRejected;
        }
      });
    } catch (const StoreLost&) {
      // The failure path found the store dead already: the deadline stays this loop's only job.
    }
  }
}

void FaultMonitor::poll() {
  const FailState fired = fired_.load();
  if (fired == FailState::kDeadline) fail_timeout();
  if (fired == FailState::kRejected) fired_fault_.raise();  // published by settle(), as this rank's failure
  if (fired == FailState::kPeerAbort || fired == FailState::kStoreLost) {
    set_reason(fired_fault_.message);
    aborted_ = true;
    run_hook(hooks_.mark_shm_aborted);
    const std::string report = fired == FailState::kPeerAbort ? missing_ranks_report() : "";
    fired_fault_.raise(report);
  }
  if (aborted_) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
  if (Clock::now() >= deadline_) fail_timeout();
}

void FaultMonitor::fail_timeout() {
  std::ostringstream os;
  os << "fastallreduce: rank " << rank_ << " timed out after " << timeout_ms_ / 1000.0 << " s in "
     << cur_.describe();
  publish(Fault{FaultKind::kTimeout, rank_, cur_.seq, os.str()});
  throw CommTimeoutError(os.str() + missing_ranks_report());
}

Fault FaultMonitor::publish(const Fault& f) {
  set_reason(f.message);
  aborted_ = true;
  // An abandoned receive may still land in these: keep them alive forever.
  run_hook(hooks_.leak_buffers);
  Fault first = f;
  try {
    const std::string record = f.encode();
    first = Fault::decode(bounded_store_->call(
        [record](c10d::Store& s) { return to_str(s.compareSet(kAbortKey, {}, to_bytes(record))); }, kStoreBound));
  } catch (const std::exception&) {
    // The store is gone (rank 0 died) or cut off: peers find out through their own deadlines.
  }
  // Local peers learn of the abort from shared memory only now, so that the record they then
  // publish loses to this one and they report the first failure, not the echo they saw.
  run_hook(hooks_.mark_shm_aborted);
  return first;
}

void FaultMonitor::publish_rejection(uint64_t seq, const std::string& message) {
  const std::string record = Fault{FaultKind::kRejected, rank_, seq, message}.encode();
  try {
    store_->set(reject_key(seq), to_bytes(record));
  } catch (const std::exception&) {
    // No store: peers find out through the timeout, as for any lost rank.
  }
}

std::exception_ptr FaultMonitor::settle(const CommError& e, std::exception_ptr own, uint64_t seq) {
  if (!aborted_ || rejected()) {
    const Fault mine = Fault::of(e, rank_, seq);
    const Fault first = publish(mine);
    // Every failure names the missing ranks, not only a deadline's (also a local peer's abort
    // or a timeout in shared memory, a transport error); reporting also publishes that this
    // rank was here. A mismatch is about the call, not about who is missing.
    const bool reported = !report_.empty();  // then e.what() carries it already
    if (!reported && !first.is_mismatch()) missing_ranks_report();
    // A peer that failed first may have torn its connections down already, and our own
    // error is then only the echo of its failure: report the first failure instead. Records
    // in the store carry no report: this rank's is appended.
    if (first != mine || (!reported && !report_.empty())) return first.as_exception(report_);
  }
  return own ? own : std::make_exception_ptr(e);
}

std::string FaultMonitor::missing_ranks_report() {
  report_ = find_missing_ranks();
  return report_;
}

std::string FaultMonitor::find_missing_ranks() {
  // Each rank that fails publishes which collective it was in; after a short wait the ranks
  // that did not publish that number are the ones that never arrived (dead, hung, or calling
  // something else).
  run_hook(hooks_.leak_buffers);
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
      if (host_of_rank_[r] != host_) others.push_back(r);
    if (!others.empty()) return ranks_report("ranks unreachable from this host (the store too)", others);
    return " [store unreachable: could not tell which ranks are missing]";
  } catch (const std::exception&) {
    return " [store unreachable: could not tell which ranks are missing]";
  }
}

}  // namespace far
