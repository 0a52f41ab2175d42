#include "backend/work.h"

#include <c10/util/Exception.h>

#include <condition_variable>

namespace far {

using c10::ivalue::Future;

// ---- FutureWork ---------------------------------------------------------------------------

FutureWork::FutureWork(c10::intrusive_ptr<Future> fut, int rank, c10d::OpType type, const char* title,
                       std::vector<at::Tensor> outputs)
    : c10d::Work(rank, type, title), fut_(std::move(fut)), outputs_(std::move(outputs)) {}

bool FutureWork::isCompleted() { return fut_->completed(); }

bool FutureWork::isSuccess() const { return fut_->completed() && !fut_->hasError(); }

std::exception_ptr FutureWork::exception() const {
  return fut_->completed() && fut_->hasError() ? fut_->exception_ptr() : nullptr;
}

std::vector<at::Tensor> FutureWork::result() { return outputs_; }

bool FutureWork::wait(std::chrono::milliseconds timeout) {
  if (timeout <= ::kNoTimeout) {
    fut_->wait();
  } else if (!fut_->completed()) {
    // c10 futures have no timed wait: a callback signals a condition variable.
    struct Signal {
      std::mutex mu;
      std::condition_variable cv;
      bool done = false;
    };
    auto s = std::make_shared<Signal>();
    fut_->addCallback([s](Future&) {
      std::lock_guard<std::mutex> lk(s->mu);
      s->done = true;
      s->cv.notify_all();
    });
    std::unique_lock<std::mutex> lk(s->mu);
    if (!s->cv.wait_for(lk, timeout, [&] { return s->done; }))
      C10_THROW_ERROR(DistBackendError, "fastallreduce: Work.wait timed out after " + std::to_string(timeout.count()) +
                                            " ms (the collective is still running; the backend timeout bounds it)");
  }
  if (fut_->hasError()) std::rethrow_exception(fut_->exception_ptr());
  return true;
}

c10::intrusive_ptr<Future> FutureWork::getFuture() { return fut_; }

CompletedWork::CompletedWork(int rank, c10d::OpType type, const char* title, std::vector<at::Tensor> outputs)
    : c10d::Work(rank, type, title), outputs_(std::move(outputs)) {}

c10::intrusive_ptr<Future> CompletedWork::getFuture() {
  std::call_once(made_, [this] {
    fut_ = c10::make_intrusive<Future>(c10::ListType::ofTensors());
    fut_->markCompleted(c10::IValue(outputs_));
  });
  return fut_;
}

}  // namespace far
