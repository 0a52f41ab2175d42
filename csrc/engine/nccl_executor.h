// CUDA tensors: the op on the communicator's own NCCL group, made at the first CUDA call (after
// the caller's header check over the CPU transport, so that a mismatch or a missing rank is the
// same error as on the CPU path, before NCCL is touched). Stream semantics follow torch's
// ProcessGroupNCCL: the op is issued under the caller's current stream (captured at the call,
// since async calls run on the worker thread), so NCCL waits for the work queued there; a
// synchronous call makes that stream wait for NCCL (Work::wait) and returns without blocking the
// CPU; an asynchronous one completes its CUDA-aware future from the Work's (op_queue.cpp).
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>

#include "common/header.h"
#include "engine/fault.h"
#include "engine/op_queue.h"
#include "transport/gloo.h"

namespace far {

class NcclExecutor {
 public:
  // `make_nccl` unset: CUDA tensors have no path. `closed` says whether the communicator is
  // closed (what the error names when the group can no longer be made).
  NcclExecutor(c10::intrusive_ptr<c10d::Store> store, int rank, int size, int64_t timeout_ms,
               BackendFactory make_nccl, std::function<bool()> closed);

  bool cuda_ok() const { return cuda_ok_; }
  // The NCCL group, made at its first use: collective, so called only at a CUDA call every rank
  // makes (after its header check). NotImplementedError without a factory.
  c10::intrusive_ptr<c10d::Backend> group();
  bool made() const;
  // What torch's NCCL watchdog reported for an earlier op, if it failed or timed out: a fault of
  // this communicator on every rank.
  std::optional<Fault> pending_fault() const;
  // Issues the task's call on the group. torch's NCCL errors become CommError.
  void run(OpQueue::Task& task, const Header& h);
  // NCCL kernels waiting for a peer never return by themselves: aborts the group (torch's way).
  void abort();
  // Shuts the group down and drops the factory, as torch's destroy_process_group does.
  void shutdown();

 private:
  void watch(const c10::intrusive_ptr<c10d::Work>& work, const Header& h);

  c10::intrusive_ptr<c10d::Store> store_;
  const int rank_, size_;
  const int64_t timeout_ms_;
  const std::function<bool()> closed_;
  const bool cuda_ok_;
  // make_mu_ serialises the making (the factory takes the GIL); mu_ guards the members and is
  // never held while the GIL is awaited.
  std::mutex make_mu_;
  mutable std::mutex mu_;
  BackendFactory make_nccl_;  // kept until the group is made or shut down
  c10::intrusive_ptr<c10d::Backend> nccl_;
  // What torch's watchdog reported (written from its thread, which may outlive this).
  struct Reported {
    std::mutex mu;
    std::optional<Fault> fault;
  };
  std::shared_ptr<Reported> reported_ = std::make_shared<Reported>();
};

}  // namespace far
