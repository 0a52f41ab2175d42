#include "engine/nccl_executor.h"

#include <c10/core/StreamGuard.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "common/errors.h"
#include "transport/nccl.h"

namespace far {

NcclExecutor::NcclExecutor(c10::intrusive_ptr<c10d::Store> store, int rank, int size, int64_t timeout_ms,
                           BackendFactory make_nccl, std::function<bool()> closed)
    : store_(std::move(store)), rank_(rank), size_(size), timeout_ms_(timeout_ms), closed_(std::move(closed)),
      cuda_ok_(static_cast<bool>(make_nccl)), make_nccl_(std::move(make_nccl)) {}

c10::intrusive_ptr<c10d::Backend> NcclExecutor::group() {
  // The factory is a Python function (it takes the GIL), so it runs under make_mu_ alone: mu_ is
  // also taken by threads that hold the GIL (made, abort, shutdown), and holding it while
  // waiting for the GIL would deadlock against them.
  std::lock_guard<std::mutex> making(make_mu_);
  BackendFactory factory;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (nccl_) return nccl_;
    if (!make_nccl_)
      throw not_implemented(closed_() ? "fastallreduce: communicator is closed"
                                      : "fastallreduce: no CUDA path: this communicator has no NCCL group factory");
    factory = make_nccl_;
  }
  // Our deadline covers the header check and the issue; NCCL's watchdog bounds the op itself.
  const auto timeout = std::chrono::milliseconds(timeout_ms_);
  c10::intrusive_ptr<c10d::Backend> pg =
      factory(c10::make_intrusive<c10d::PrefixStore>("nccl/", store_), rank_, size_, timeout);
  std::lock_guard<std::mutex> lk(mu_);
  if (!make_nccl_) {  // closed while the group was being made: release it as shutdown() would have
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

bool NcclExecutor::made() const {
  std::lock_guard<std::mutex> lk(mu_);
  return static_cast<bool>(nccl_);
}

std::optional<Fault> NcclExecutor::pending_fault() const {
  std::lock_guard<std::mutex> lk(reported_->mu);
  return reported_->fault;
}

void NcclExecutor::run(OpQueue::Task& task, const Header& h) {
  const Call& c = task.call;
  try {
    c10::intrusive_ptr<c10d::Backend> pg = group();
    c10::OptionalStreamGuard guard(c.stream);
    c10::intrusive_ptr<c10d::Work> work = nccl_issue(*pg, c.kind, c.op, c.in, c.out, c.root);
    watch(work, h);
    if (task.sync || c.copy_back.defined()) {
      work->wait();  // the caller's stream waits for NCCL; the CPU does not
      if (c.copy_back.defined()) c.copy_back.detach().copy_(c.out.view(c.copy_back.sizes()));
      return;
    }
    task.after = work->getFuture();
  } catch (const c10::Error& e) {
    // torch's NCCL errors (DistBackendError and the like) as the CPU path's: a CommError, which
    // is published so that every rank fails this call promptly.
    throw CommError("fastallreduce: rank " + std::to_string(rank_) + ": " + h.describe() +
                    " failed on NCCL: " + e.what_without_backtrace());
  }
}

void NcclExecutor::watch(const c10::intrusive_ptr<c10d::Work>& work, const Header& h) {
  // ProcessGroupNCCL's watchdog completes this future with the op's WorkResult. The group is
  // made with TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (fastallreduce/communicator.py): on a timeout or
  // an NCCL error it aborts its NCCL communicator instead of ending the process, and the next
  // call raises CommTimeoutError (a timeout) or CommError (NCCL's errors).
  c10::intrusive_ptr<c10::ivalue::Future> result;
  try {
    result = work->getFutureResult();
  } catch (const std::exception&) {
    return;  // a torch without per-work results: NCCL's own errors still reach the next call
  }
  if (!result) return;
  result->addCallback([reported = reported_, what = h.describe(), rank = rank_, seq = h.seq](c10::ivalue::Future& f) {
    // Only a WorkResult other than SUCCESS is a fault; anything else is left to NCCL's errors.
    if (f.hasError() || !f.value().isInt()) return;
    const std::string record = nccl_fault_record(static_cast<int>(f.value().toInt()), rank, what);
    if (record.empty()) return;
    Fault fault = Fault::decode(record);
    fault.rank = rank;
    fault.seq = seq;
    std::lock_guard<std::mutex> lk(reported->mu);
    if (!reported->fault) reported->fault = std::move(fault);
  });
}

void NcclExecutor::abort() {
  c10::intrusive_ptr<c10d::Backend> nccl;
  {
    std::lock_guard<std::mutex> lk(mu_);
    nccl = nccl_;
  }
  if (nccl) {
    try {
      nccl->abort();
    } catch (const std::exception&) {  // already torn down
    }
  }
}

void NcclExecutor::shutdown() {
  // The factory holds a Python function: it goes too.
  c10::intrusive_ptr<c10d::Backend> nccl;
  BackendFactory factory;
  {
    std::lock_guard<std::mutex> lk(mu_);
    nccl.swap(nccl_);
    factory.swap(make_nccl_);
  }
  if (nccl) {
    try {
      nccl->shutdown();
    } catch (const std::exception&) {  // already failed: nothing left to release cleanly
    }
  }
}

}  // namespace far
