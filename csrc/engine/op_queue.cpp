#include "engine/op_queue.h"

#include <pthread.h>
#include <sched.h>

#include <c10/core/StreamGuard.h>

namespace far {

OpQueue::OpQueue(Execute execute, bool worker_idle) : q_(std::make_shared<State>()) {
  q_->execute = std::move(execute);
  worker_ = std::make_unique<std::thread>([q = q_, worker_idle] { worker_loop(q, worker_idle); });
  worker_id_ = worker_->get_id();
}

OpQueue::~OpQueue() {
  if (worker_ && worker_->joinable()) {
    // Only when the last reference dropped on the worker thread itself (a future callback): it
    // returns into drain(), which from here on touches only the shared state.
    {
      std::lock_guard<std::mutex> lk(q_->mu);
      q_->gone = true;
    }
    worker_->detach();
  }
}

uint64_t OpQueue::take_seq() {
  std::lock_guard<std::mutex> lk(q_->mu);
  return q_->next_seq++;
}

bool OpQueue::pending() const {
  std::lock_guard<std::mutex> lk(q_->mu);
  return q_->busy || !q_->tasks.empty();
}

OpQueue::FuturePtr OpQueue::submit(Call call, bool sync, const std::function<void()>& check) {
  State& q = *q_;
  std::unique_lock<std::mutex> lk(q.mu);
  check();  // under the lock: close() may have run since the caller last checked
  if (sync && q.tasks.empty() && !q.busy) {
    // FIFO holds: nothing is queued or running, so this op is next. Run it here.
    q.busy = true;
    Task t{std::move(call), q.next_seq++, {}, true, {}};
    lk.unlock();
    std::exception_ptr err = q.execute(t);
    t = Task{};
    lk.lock();
    q.busy = false;
    // Wake the worker only if an async op was queued meanwhile: a needless wake-up costs a
    // context switch on a core the peer ranks are running on.
    if (!q.tasks.empty()) q.cv.notify_all();
    lk.unlock();
    if (err) std::rethrow_exception(err);
    return {};
  }
  // A CUDA call's future is CUDA-aware (its events order the caller's use of the result).
  std::vector<c10::Device> devices;
  if (!sync && call.stream) devices.push_back(call.stream->device());
  auto fut = c10::make_intrusive<c10::ivalue::Future>(c10::TensorType::get(), std::move(devices));
  q.tasks.push_back(Task{std::move(call), q.next_seq++, fut, sync, {}});
  q.cv.notify_all();
  lk.unlock();
  if (!sync) return fut;
  if (on_worker()) {
    // A synchronous call from a future callback: the worker is this thread, so waiting for it
    // would wait forever. Run the queue here, in order, up to and including this call.
    drain(q_, fut);
  } else {
    fut->wait();
  }
  if (fut->hasError()) std::rethrow_exception(fut->exception_ptr());
  return {};
}

void OpQueue::complete(Task& t, std::exception_ptr err) {
  if (!t.fut) return;
  // Callbacks run here, after the op has left the watchdog's accounting (a slow callback is
  // not the collective's time) and outside the queue lock (a callback may issue collectives).
  if (t.after && !err) {
    // A CUDA call: complete when NCCL's future does. Its callback runs on a stream that waits
    // for the NCCL kernels, so the events our future records come after them, and the caller's
    // stream is never made to wait (torch's Future::then does the same).
    t.after->addCallback([fut = t.fut, result = t.call.result()](c10::ivalue::Future& f) {
      if (f.hasError())
        fut->setError(f.exception_ptr());
      else
        fut->markCompleted(c10::IValue(result));
    });
    return;
  }
  // A CUDA call already ordered on the caller's stream records its events there.
  c10::OptionalStreamGuard guard(t.call.stream);
  if (err)
    t.fut->setError(err);
  else
    t.fut->markCompleted(c10::IValue(t.call.result()));
}

void OpQueue::drain(const std::shared_ptr<State>& qp, const FuturePtr& until) {
  std::shared_ptr<State> q = qp;  // the caller's reference may go with the owner (q->gone)
  for (;;) {
    std::unique_lock<std::mutex> lk(q->mu);
    q->cv.wait(lk, [&] {
      return q->gone || (until && until->completed()) || (!q->tasks.empty() && !q->busy) ||
             (!until && q->stop && q->tasks.empty() && !q->busy);
    });
    if (q->gone || (until && until->completed()) || q->tasks.empty()) return;
    Task t = std::move(q->tasks.front());
    q->tasks.pop_front();
    q->busy = true;
    lk.unlock();
    std::exception_ptr err = q->execute(t);
    lk.lock();
    q->busy = false;
    if (!q->tasks.empty() || q->stop) q->cv.notify_all();
    lk.unlock();
    // May drop the last reference to the owner (q->gone): only `q` is used afterwards.
    complete(t, err);
    // Drop the task's tensors and future without the lock: the last reference to a
    // Python-owned tensor may need the GIL, which a thread blocked on this lock could hold.
    t = Task{};
  }
}

void OpQueue::worker_loop(std::shared_ptr<State> q, bool worker_idle) {
  // Async ops (DDP buckets) run here while the caller computes, and the caller's wait() depends
  // on this thread, so it runs at normal priority: under SCHED_IDLE any other busy process (a
  // DataLoader worker) starves it completely, and a 16 MB async allreduce took 9-45 s instead
  // of 0.2 s beside one busy loop per core. FASTALLREDUCE_WORKER_IDLE=1 still asks for
  // SCHED_IDLE, for a machine with nothing else to run. Failing to switch only loses that.
  pthread_setname_np(pthread_self(), "far-worker");
  if (worker_idle) {
    sched_param sp{};
    sp.sched_priority = 0;
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
  }
  drain(q, nullptr);
}

bool OpQueue::close() {
  {
    std::lock_guard<std::mutex> lk(q_->mu);
    if (closed_.exchange(true)) return false;
    q_->stop = true;
    q_->cv.notify_all();
  }
  if (worker_ && worker_->joinable()) {
    if (on_worker()) {
      drain(q_, nullptr);  // close() from a future callback: finish the queue here
    } else {
      worker_->join();
    }
  }
  return true;
}

}  // namespace far
