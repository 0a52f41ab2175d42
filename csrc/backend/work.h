// The c10d::Work objects the backend returns for engine collectives.
#pragma once
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <mutex>
#include <vector>

namespace far {

// A Work completed by a c10 Future (an engine op, or several ops collected together).
// Unlike torch's own future-wrapping work, it answers isCompleted()/isSuccess()/exception()
// from the future and honours wait(timeout).
class FutureWork : public c10d::Work {
 public:
  FutureWork(c10::intrusive_ptr<c10::ivalue::Future> fut, int rank, c10d::OpType type, const char* title,
             std::vector<at::Tensor> outputs);
  bool isCompleted() override;
  bool isSuccess() const override;
  std::exception_ptr exception() const override;
  std::vector<at::Tensor> result() override;
  bool wait(std::chrono::milliseconds timeout) override;
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override;

 private:
  c10::intrusive_ptr<c10::ivalue::Future> fut_;
  std::vector<at::Tensor> outputs_;
};

// A Work that had finished when it was returned (a synchronous engine op). Its Future is made
// only if someone asks: the common dist.all_reduce(async_op=False) path then allocates no
// Future, which matters because that path runs with caches cold from the collective itself.
class CompletedWork : public c10d::Work {
 public:
  CompletedWork(int rank, c10d::OpType type, const char* title, std::vector<at::Tensor> outputs);
  bool isCompleted() override { return true; }
  bool isSuccess() const override { return true; }
  std::exception_ptr exception() const override { return nullptr; }
  std::vector<at::Tensor> result() override { return outputs_; }
  bool wait(std::chrono::milliseconds) override { return true; }
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override;

 private:
  std::vector<at::Tensor> outputs_;
  std::once_flag made_;
  c10::intrusive_ptr<c10::ivalue::Future> fut_;
};

}  // namespace far
