// The backend's own plumbing: construction and teardown, the two ways a call goes (onto the
// engine, or header-checked and then delegated), barrier, shutdown, and point-to-point calls.
// The collective entry points are in engine_entries.cpp (calls the engine may run) and
// delegated.cpp (calls it never runs).
#include "backend/backend.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <algorithm>

#include "backend/c10d_adapt.h"
#include "backend/without_gil.h"
#include "common/errors.h"

namespace far {

using c10::ivalue::Future;

FastAllreduceBackend::FastAllreduceBackend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                           std::chrono::milliseconds timeout, Algo algo,
                                           const BackendFactory& make_backend, const std::string& local_error,
                                           BackendFactory make_nccl)
    : c10d::Backend(rank, size), options_(c10::make_intrusive<Options>("fastallreduce", timeout)) {
  CommOptions o;
  o.config.default_algo = algo;  // agreed: rank 0's applies on every rank
  o.config.timeout_ms = std::min<int64_t>(timeout.count(), kMaxTimeoutMs);
  o.name = "backend";
  o.make_backend = make_backend;
  o.make_nccl = std::move(make_nccl);
  o.config.local_error = local_error;
  c10::intrusive_ptr<c10d::Store> mine;
  try {
    mine = incarnation_store(store, size);
    engine_ = std::shared_ptr<Communicator>(
        new Communicator(c10::make_intrusive<c10d::PrefixStore>("engine/", mine), rank, size, std::move(o)),
        &Communicator::dispose);
  } catch (...) {
    rethrow_as_dist_error();
  }
  // The engine's Gloo backend carries only its own traffic; this one runs the delegated calls.
  gloo_ = make_backend(c10::make_intrusive<c10d::PrefixStore>("delegate/", mine), rank, size, timeout);
}

FastAllreduceBackend::~FastAllreduceBackend() {
  // In a forked child, Gloo's threads belong to the parent: destroying it would join them.
  if (engine_ && engine_->forked()) {
    (void)gloo_.release();
    return;
  }
  without_gil([this] {
    engine_.reset();
    gloo_.reset();
  });
}

void FastAllreduceBackend::setTimeout(std::chrono::milliseconds timeout) {
  options_->timeout = timeout;
  gloo_->setTimeout(timeout);
}

bool FastAllreduceBackend::engine_takes(Kind kind, const at::Tensor& t, const c10d::ReduceOp& op) const {
  return engine_->takes(kind, t, to_redop(op));
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::engine_run(Collective c, c10d::OpType type, const char* title,
                                                                bool sync, std::vector<at::Tensor> outputs,
                                                                std::function<void()> finish, bool count) {
  if (c.kind == Kind::kAllreduce) c.algo = engine_->config().default_algo;
  c10::intrusive_ptr<Future> engine_fut;
  try {
    if (sync) {
      // async_op=False: the caller waits at once, so the engine runs it on this thread when
      // nothing is queued (no hand-off to the worker and back; FIFO order holds either way).
      // The caller keeps its tensors alive throughout, so no reference here is ever the last.
      engine_->run(c);
      if (finish) finish();
      if (count) engine_ops_.fetch_add(1, std::memory_order_relaxed);
      return c10::make_intrusive<CompletedWork>(rank_, type, title, std::move(outputs));
    }
    // Async: detached aliases (same storage, no Python object), so that the worker thread drops
    // its references without the GIL, which the caller's thread usually holds by then.
    const bool in_place = !c.output.defined() || c.output.is_same(c.input);
    c.input = c.input.detach();
    c.output = in_place ? at::Tensor() : c.output.detach();
    engine_fut = engine_->run_async(c);
  } catch (...) {
    rethrow_as_dist_error();
  }
  if (count) engine_ops_.fetch_add(1, std::memory_order_relaxed);
  auto outs = outputs;
  return c10::make_intrusive<FutureWork>(as_list_future(engine_fut, std::move(outs), std::move(finish)), rank_, type,
                                         title, std::move(outputs));
}

c10d::Backend& FastAllreduceBackend::backend_for(c10::DeviceType device) {
  // CUDA tensors go to the engine's NCCL group (made at the first CUDA call), the rest to Gloo.
  return device == c10::kCUDA ? *engine_->nccl() : *gloo_;
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::run_delegated(const Delegated& d, const Delegate& fn) {
  c10d::Backend* b = nullptr;
  try {
    engine_->check_delegated(d);
    b = &backend_for(d.device);
  } catch (...) {
    rethrow_as_dist_error();
  }
  delegated_ops_.fetch_add(1, std::memory_order_relaxed);
  return track(fn(*b));
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::barrier(const c10d::BarrierOptions& opts) {
  // Not Gloo's barrier: Gloo's waits on its prior work and rethrows that work's error, and
  // whether a just-failed collective is still in its list is a race, so after a failed
  // delegated op (e.g. PREMUL_SUM) one rank raised while the others waited for it until the
  // timeout (reproduced with plain Gloo groups: tests/backend_cases.py barrier_after_failure).
  // Here: this rank's delegated work finishes first (errors stay with their own Work), then one
  // 1-byte engine collective, which is FIFO after every allreduce queued on this rank and, like
  // every engine op, header-checked and failed on all ranks together.
  wait_delegated();
  Collective c;
  c.input = at::zeros({1}, at::TensorOptions().dtype(at::kByte));
  c.op = RedOp::kMax;
  auto flag = c.input;
  return engine_run(std::move(c), c10d::OpType::BARRIER, "fastallreduce:barrier", !opts.asyncOp, {flag}, {},
                    /*count=*/false);
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::track(c10::intrusive_ptr<c10d::Work> work) {
  std::lock_guard<std::mutex> lk(pending_mu_);
  // Drop finished entries as we go so that the list stays as short as the work in flight.
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                [](const c10::weak_intrusive_ptr<c10d::Work>& w) {
                                  auto p = w.lock();
                                  return !p || p->isCompleted();
                                }),
                 pending_.end());
  pending_.emplace_back(work);
  return work;
}

void FastAllreduceBackend::wait_delegated() {
  std::vector<c10::weak_intrusive_ptr<c10d::Work>> prior;
  {
    std::lock_guard<std::mutex> lk(pending_mu_);
    prior.swap(pending_);
  }
  for (auto& w : prior) {
    auto p = w.lock();
    if (!p || p->isCompleted()) continue;
    try {
      p->wait();
    } catch (...) {  // reported by that op's own wait()
    }
  }
}

void FastAllreduceBackend::shutdown() {
  if (engine_->forked()) return;
  engine_->close();
  gloo_->shutdown();
}

void FastAllreduceBackend::abort() {
  if (engine_->forked()) return;
  engine_->abort("torch.distributed abort");
  engine_->close();
  gloo_->abort();
}

// Point-to-point calls involve two ranks only: there is no collective header to compare.
c10d::Backend& FastAllreduceBackend::p2p_backend(const std::vector<at::Tensor>& tensors) {
  try {
    return backend_for(device_of(tensors));
  } catch (...) {
    rethrow_as_dist_error();
  }
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::send(std::vector<at::Tensor>& tensors, int dst, int tag) {
  delegated_ops_.fetch_add(1, std::memory_order_relaxed);
  return track(p2p_backend(tensors).send(tensors, dst, tag));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::recv(std::vector<at::Tensor>& tensors, int src, int tag) {
  delegated_ops_.fetch_add(1, std::memory_order_relaxed);
  return track(p2p_backend(tensors).recv(tensors, src, tag));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::recvAnysource(std::vector<at::Tensor>& tensors, int tag) {
  delegated_ops_.fetch_add(1, std::memory_order_relaxed);
  return track(p2p_backend(tensors).recvAnysource(tensors, tag));
}

void FastAllreduceBackend::monitoredBarrier(const c10d::BarrierOptions& opts, bool wait_all_ranks) {
  gloo_->monitoredBarrier(opts, wait_all_ranks);
}

uint64_t FastAllreduceBackend::getSequenceNumberForGroup() { return gloo_->getSequenceNumberForGroup(); }

void FastAllreduceBackend::enableCollectivesTiming() { gloo_->enableCollectivesTiming(); }

}  // namespace far
