// The engine's FIFO of collectives. Calls run in issue order, one at a time: a synchronous call
// on the caller's thread when nothing is queued or running, everything else on the worker
// thread. What a call does is the owner's (`Execute`); this only orders, numbers and completes.
#pragma once
#include <ATen/core/ivalue.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "engine/collective.h"

namespace far {

class OpQueue {
 public:
  using FuturePtr = c10::intrusive_ptr<c10::ivalue::Future>;
  struct Task {
    Call call;
    uint64_t seq = 0;  // issue order, the same on every rank
    FuturePtr fut;     // null: a synchronous call on its caller's thread
    bool sync = false;
    // A CUDA call returning at once: fut completes from this (the NCCL Work's CUDA-aware future).
    FuturePtr after;
  };
  // Runs one task (on whichever thread runs it); returns its error, null when it succeeded.
  using Execute = std::function<std::exception_ptr(Task&)>;

  // Starts the worker thread (under SCHED_IDLE when `worker_idle`).
  OpQueue(Execute execute, bool worker_idle);
  // Where the owner is destroyed on the worker thread itself (in a future callback), the worker
  // is detached and returns as soon as that callback does.
  ~OpQueue();
  OpQueue(const OpQueue&) = delete;
  OpQueue& operator=(const OpQueue&) = delete;

  // Queues `call` (after `check()`, which runs under the queue's lock and may throw to refuse
  // it). sync: runs it and returns once it is done, rethrowing its error; otherwise returns a
  // future that completes with the result tensor or the error.
  FuturePtr submit(Call call, bool sync, const std::function<void()>& check);
  // The next sequence number, for a call that never runs (a rejection): ranks stay in step.
  uint64_t take_seq();
  // Whether a call is queued or running.
  bool pending() const;
  bool closed() const { return closed_.load(); }
  // Stops taking calls, lets the queued ones run, then stops the worker. False, doing nothing,
  // when already closed.
  bool close();

 private:
  // Shared with the worker thread: it outlives this object when the owner is destroyed on the
  // worker thread itself.
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Task> tasks;
    bool busy = false, stop = false, gone = false;
    uint64_t next_seq = 0;
    Execute execute;
  };
  bool on_worker() const { return std::this_thread::get_id() == worker_id_; }
  // Runs queued tasks on this thread until `until` completes (null: until stopped).
  static void drain(const std::shared_ptr<State>& q, const FuturePtr& until);
  static void complete(Task& t, std::exception_ptr err);
  static void worker_loop(std::shared_ptr<State> q, bool worker_idle);

  std::shared_ptr<State> q_;
  std::atomic<bool> closed_{false};
  std::unique_ptr<std::thread> worker_;
  std::thread::id worker_id_;
};

}  // namespace far
