// CUDA tensors: the header check over the CPU transport (so a mismatch or a missing rank is the
// same error as on the CPU path, before NCCL is touched), then the op on the communicator's own
// NCCL group, made at the first CUDA call. Stream semantics follow torch's ProcessGroupNCCL:
// the op is issued under the caller's current stream (captured at the call, since async calls
// run on the worker thread), so NCCL waits for the work queued there; a synchronous call makes
// that stream wait for NCCL (Work::wait) and returns without blocking the CPU; an asynchronous
// one completes its CUDA-aware future from the Work's (communicator.cpp, complete()).
#include <c10/core/StreamGuard.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "common/errors.h"
#include "engine/communicator.h"
#include "transport/nccl.h"

namespace far {

c10::intrusive_ptr<c10d::Backend> Communicator::nccl() {
  // The factory is a Python function (it takes the GIL), so it runs under nccl_make_mu_ alone:
  // nccl_mu_ is also taken by threads that hold the GIL (nccl_made, abort, close), and holding it
  // while waiting for the GIL would deadlock against them.
  std::lock_guard<std::mutex> making(nccl_make_mu_);
  BackendFactory factory;
  {
    std::lock_guard<std::mutex> lk(nccl_mu_);
    if (nccl_) return nccl_;
    if (!make_nccl_)
      throw not_implemented(closed_ ? "fastallreduce: communicator is closed"
                                    : "fastallreduce: no CUDA path: this communicator has no NCCL group factory");
    factory = make_nccl_;
  }
  // Our deadline covers the header check and the issue; NCCL's watchdog bounds the op itself.
  const auto timeout = std::chrono::milliseconds(cfg_.timeout_ms);
  c10::intrusive_ptr<c10d::Backend> pg =
      factory(c10::make_intrusive<c10d::PrefixStore>("nccl/", store_), rank_, size_, timeout);
  std::lock_guard<std::mutex> lk(nccl_mu_);
  if (!make_nccl_) {  // closed while the group was being made: release it as close() would have
    try {
      pg->shutdown();
    } catch (const std::exception&) {
    }
    throw ClosedError("fastallreduce: communicator is closed");
  }
  nccl_ = std::move(pg);
  make_nccl_ = nullptr;
  return nccl_;
}

bool Communicator::nccl_made() const {
  std::lock_guard<std::mutex> lk(nccl_mu_);
  return static_cast<bool>(nccl_);
}

void Communicator::run_nccl(Task& task, const Header& h) {
  const Call& c = task.call;
  {
    // torch's NCCL watchdog found an earlier op failed or timed out (watch_nccl): that is this
    // communicator's fault, on every rank (published through the store like any other).
    std::lock_guard<std::mutex> lk(nccl_fault_->mu);
    if (!nccl_fault_->record.empty()) {
      const std::string record = nccl_fault_->record;
      publish_abort(record);
      throw_fault_record(record);  // a timeout as CommTimeoutError, NCCL's errors as CommError
    }
  }
  announce(h);
  if (size_ > 1) check_header_only(h);
  try {
    c10::intrusive_ptr<c10d::Backend> pg = nccl();
    c10::OptionalStreamGuard guard(c.stream);
    c10::intrusive_ptr<c10d::Work> work = nccl_issue(*pg, c.kind, c.op, c.in, c.out, c.root);
    watch_nccl(work, h);
    if (task.sync || c.copy_back.defined()) {
      work->wait();  // the caller's stream waits for NCCL; the CPU does not
      if (c.copy_back.defined()) c.copy_back.detach().copy_(c.out.view(c.copy_back.sizes()));
      return;
    }
    task.after = work->getFuture();
  } catch (const c10::Error& e) {
    // torch's NCCL errors (DistBackendError and the like) as the CPU path's: a CommError, which
    // execute() publishes so that every rank fails this call promptly.
    throw CommError("fastallreduce: rank " + std::to_string(rank_) + ": " + h.describe() +
                    " failed on NCCL: " + e.what_without_backtrace());
  }
}

void Communicator::watch_nccl(const c10::intrusive_ptr<c10d::Work>& work, const Header& h) {
  // ProcessGroupNCCL's watchdog completes this future with the op's WorkResult. The group is
  // made with TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (fastallreduce/communicator.py): on a timeout or
  // an NCCL error it aborts its NCCL communicator instead of ending the process, and the next
  // call here raises CommTimeoutError (a timeout) or CommError (NCCL's errors).
  c10::intrusive_ptr<c10::ivalue::Future> result;
  try {
    result = work->getFutureResult();
  } catch (const std::exception&) {
    return;  // a torch without per-work results: NCCL's own errors still reach the next call
  }
  if (!result) return;
  result->addCallback([fault = nccl_fault_, what = h.describe(), rank = rank_](c10::ivalue::Future& f) {
    // Only a WorkResult other than SUCCESS is a fault; anything else is left to NCCL's errors.
    if (f.hasError() || !f.value().isInt()) return;
    std::string record = nccl_fault_record(static_cast<int>(f.value().toInt()), rank, what);
    if (record.empty()) return;
    std::lock_guard<std::mutex> lk(fault->mu);
    if (fault->record.empty()) fault->record = std::move(record);
  });
}

}  // namespace far
