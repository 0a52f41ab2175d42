// Faults are errors on every rank, never hangs. The fault monitor owns what that takes: the op in
// progress and its deadline, the watchdog thread that watches them and polls the store for a
// peer's fault record or a peer's rejection of this very call, the bounded store every such round
// trip goes through, and this communicator's own failure state (aborted, why). When something
// fires it records why and interrupts the blocked transport wait (a hook), and the op's thread
// raises from poll(). The first fault published in the store ("abort") is the one every rank
// reports, naming the ranks that never reached the call.
#pragma once
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/header.h"
#include "engine/bounded_store.h"
#include "engine/fault.h"

namespace far {

class FaultMonitor {
 public:
  using Clock = std::chrono::steady_clock;
  // What a fault does to the rest of the engine (each may be empty).
  struct Hooks {
    std::function<void()> interrupt;        // wakes blocked transport waits (they then poll())
    std::function<void()> clear_interrupt;  // undoes it, for a deadline that fired as its op ended
    std::function<void()> leak_buffers;     // an abandoned receive may still land in staging
    std::function<void()> mark_shm_aborted; // local peers learn of a fault from shared memory
  };
  // `host_of_rank` and `host` name the ranks cut off with this host when the store is lost.
  FaultMonitor(c10::intrusive_ptr<c10d::Store> store, int rank, int size, int64_t timeout_ms,
               std::vector<int> host_of_rank, int host, Hooks hooks);
  ~FaultMonitor();
  FaultMonitor(const FaultMonitor&) = delete;
  FaultMonitor& operator=(const FaultMonitor&) = delete;

  // Starts the watchdog thread; stop() joins it.
  void start();
  void stop();

  // The op in progress (only one runs at a time) and its deadline.
  void begin_op(const Header& h);
  void end_op();
  Clock::time_point deadline() const { return deadline_; }
  // Called from every slow wait: raises the fault that fired, a local abort, or the deadline.
  void poll();

  // Publishes `f` unless a fault is published already, and returns the first one (`f` where the
  // store cannot be reached). Marks this communicator aborted.
  Fault publish(const Fault& f);
  // A rejection of call `seq`: peers making that call raise MismatchError at once.
  void publish_rejection(uint64_t seq, const std::string& message);
  // The error an op that failed with `e` ends with (`own`: `e` as thrown, or null): the first
  // fault published on any rank, with the ranks that never reached the call.
  std::exception_ptr settle(const CommError& e, std::exception_ptr own, uint64_t seq);
  // Clears the missing-ranks report (at each op's start).
  void clear_report() { report_.clear(); }

  bool aborted() const { return aborted_.load(); }
  bool rejected() const { return fired_.load() == FailState::kRejected; }
  std::string abort_reason() const;

 private:
  [[noreturn]] void fail_timeout();
  // Also kept in report_, for the error settle() returns.
  std::string missing_ranks_report();
  std::string find_missing_ranks();
  void set_reason(const std::string& why);
  void watchdog_loop();
  void run_hook(const std::function<void()>& hook) const {
    if (hook) hook();
  }

  c10::intrusive_ptr<c10d::Store> store_;
  std::unique_ptr<BoundedStore> bounded_store_;  // store_ for the watchdog and the failure path
  const int rank_, size_;
  const int64_t timeout_ms_;
  const std::vector<int> host_of_rank_;
  const int host_;
  const Hooks hooks_;

  // in_op_, cur_.seq and fired_ change under mu_, so that a deadline never fires for an op that
  // has already finished.
  Header cur_;
  Clock::time_point deadline_;
  bool in_op_ = false;
  std::unique_ptr<std::thread> watchdog_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<FailState> fired_{FailState::kNone};
  Fault fired_fault_;  // written before fired_ is set

  std::atomic<bool> aborted_{false};
  mutable std::mutex reason_mu_;
  std::string reason_;
  std::string report_;  // this rank's missing-ranks report for the op that failed (op thread only)
};

}  // namespace far
