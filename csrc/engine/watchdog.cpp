// Faults are errors on every rank, never hangs. While an op runs, the watchdog thread watches
// its deadline and polls the store for a peer's abort record or for a peer's rejection of this
// very call; when one fires it records why and interrupts the blocked transport wait, and the
// op's thread raises from poll(). The first failure is published in the store ("abort"), so
// every rank reports the same cause, naming the ranks that never reached the call.
#include <sstream>

#include "common/errors.h"
#include "engine/communicator.h"

namespace far {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kStorePoll = std::chrono::milliseconds(100);
constexpr auto kReportWait = std::chrono::milliseconds(1500);
const std::string kAbortKey = "abort";

std::string to_str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }
std::vector<uint8_t> to_bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

// The abort record in the store is "<kind>|<message>"; the kind picks the exception class.
[[noreturn]] void throw_kind(const std::string& record) {
  const auto bar = record.find('|');
  const std::string kind = record.substr(0, bar), msg = bar == std::string::npos ? record : record.substr(bar + 1);
  if (kind == "mismatch") throw MismatchError(msg);
  if (kind == "timeout") throw CommTimeoutError(msg);
  throw CommError(msg);
}

}  // namespace

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
    if (now < next_store_poll) continue;
    next_store_poll = now + kStorePoll;
    const Header op = cur_;
    const std::string reject_key = "reject/" + std::to_string(op.seq);
    // Store round trips happen without the lock: ending an op never waits for one.
    lk.unlock();
    int fire = 0;
    std::string record;
    try {
      if (store_->check({kAbortKey})) {
        record = to_str(store_->get(kAbortKey));
        fire = 2;
      } else if (store_->check({reject_key})) {
        record = "mismatch|fastallreduce: " + op.describe() + " was rejected by " + to_str(store_->get(reject_key));
        fire = 4;
      }
    } catch (const std::exception& e) {
      record = std::string("fault|fastallreduce: rank ") + std::to_string(rank_) +
               " lost the store (is rank 0 dead?): " + e.what();
      fire = 3;
    }
    lk.lock();
    if (fire && in_op_ && cur_.seq == op.seq && !fired_) {
      fired_record_ = record;
      fired_ = fire;
      interrupt_transports();
    }
  }
}

void Communicator::poll() {
  const int fired = fired_.load();
  if (fired == 1) fail_timeout();
  if (fired == 4) throw_kind(fired_record_);  // published by execute(), as this rank's failure
  if (fired >= 2) {
    {
      std::lock_guard<std::mutex> lk(reason_mu_);
      if (reason_.empty()) reason_ = fired_record_.substr(fired_record_.find('|') + 1);
    }
    aborted_ = true;
    if (shm_) shm_->mark_aborted();
    const std::string report = fired == 2 ? missing_ranks_report() : "";
    throw_kind(fired_record_ + report);
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
  if (shm_) shm_->mark_aborted();
  // An abandoned receive may still land in these: keep them alive forever.
  staging_.leak();
  hdr_staging_.leak();
  try {
    return to_str(store_->compareSet(kAbortKey, {}, to_bytes(record)));
  } catch (const std::exception&) {
    // The store is gone (rank 0 died): peers find out through their own transport errors.
    return record;
  }
}

std::string Communicator::missing_ranks_report() {
  // Each rank that fails publishes which collective it was in; after a short wait the ranks
  // that did not publish that number are the ones that never arrived (dead, hung, or calling
  // something else).
  staging_.leak();
  hdr_staging_.leak();
  try {
    store_->set("status/" + std::to_string(rank_), to_bytes(std::to_string(cur_.seq)));
    std::vector<int> missing;
    const auto until = Clock::now() + kReportWait;
    for (;;) {
      missing.clear();
      for (int r = 0; r < size_; ++r) {
        const std::string key = "status/" + std::to_string(r);
        if (!store_->check({key}) || to_str(store_->get(key)) != std::to_string(cur_.seq)) missing.push_back(r);
      }
      if (missing.empty() || Clock::now() >= until) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (missing.empty()) return " [every rank reached this collective]";
    std::ostringstream os;
    os << " [ranks that did not reach " << kind_name(static_cast<Kind>(cur_.kind)) << " #" << cur_.seq << ": ";
    for (size_t i = 0; i < missing.size(); ++i) os << (i ? ", " : "") << missing[i];
    os << "]";
    return os.str();
  } catch (const std::exception&) {
    return " [store unreachable: could not tell which ranks are missing]";
  }
}

}  // namespace far
