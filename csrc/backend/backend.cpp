#include "backend/backend.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "engine/errors.h"

namespace far {
namespace {

using c10::ivalue::Future;

// Engine faults reach torch users as torch.distributed.DistBackendError (what torch raises for a
// failed or timed-out collective), with the fastallreduce class name kept in the message.
std::exception_ptr as_dist_error(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const c10::Error&) {
    return std::current_exception();
  } catch (const MismatchError& x) {
    return std::make_exception_ptr(c10::DistBackendError(
        {__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, std::string("fastallreduce MismatchError: ") + x.what()));
  } catch (const CommTimeoutError& x) {
    return std::make_exception_ptr(c10::DistBackendError(
        {__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, std::string("fastallreduce CommTimeoutError: ") + x.what()));
  } catch (const std::exception& x) {
    return std::make_exception_ptr(c10::DistBackendError(
        {__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, std::string("fastallreduce: ") + x.what()));
  }
}

bool to_redop(const c10d::ReduceOp& op, RedOp* out) {
  switch (op.op_) {
    case c10d::ReduceOp::SUM: *out = RedOp::kSum; return true;
    case c10d::ReduceOp::AVG: *out = RedOp::kAvg; return true;
    case c10d::ReduceOp::PRODUCT: *out = RedOp::kProduct; return true;
    case c10d::ReduceOp::MAX: *out = RedOp::kMax; return true;
    case c10d::ReduceOp::MIN: *out = RedOp::kMin; return true;
    default: return false;  // BAND/BOR/BXOR/PREMUL_SUM: Gloo's behaviour (and errors)
  }
}

bool engine_dtype(at::ScalarType t, DType* out) {
  try {
    *out = to_dtype(t);
    return true;
  } catch (const std::invalid_argument&) {
    return false;
  }
}

// The engine's future yields the output tensor; torch's collectives yield a list of tensors.
c10::intrusive_ptr<Future> as_list_future(const c10::intrusive_ptr<Future>& engine_fut, std::vector<at::Tensor> outs,
                                          std::function<void()> finish) {
  auto fut = c10::make_intrusive<Future>(c10::ListType::ofTensors());
  // Runs inline on the engine thread when the op finishes: no GIL, no extra hand-off.
  // `outs` move into the value, so the engine thread never holds the last C++ reference to a
  // tensor Python also owns (dropping that one takes the GIL).
  engine_fut->addCallback([fut, outs = std::move(outs), finish = std::move(finish)](Future& f) mutable {
    if (f.hasError()) {
      fut->setError(as_dist_error(f.exception_ptr()));
    } else {
      try {
        if (finish) finish();
        fut->markCompleted(c10::IValue(std::move(outs)));
      } catch (...) {
        fut->setError(as_dist_error(std::current_exception()));
      }
    }
    outs.clear();
    finish = nullptr;
  });
  return fut;
}

// A tensor the engine takes as it is: dense, contiguous, on the CPU, of a dtype it supports.
bool engine_tensor(const at::Tensor& t, DType* dt) {
  return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided && t.is_contiguous() && !t.is_conj() &&
         !t.is_neg() && engine_dtype(t.scalar_type(), dt);
}

// A reduction the engine runs on `dt` (else Gloo's behaviour, and errors, apply).
bool engine_op(const c10d::ReduceOp& rop, DType dt, RedOp* op) {
  if (!to_redop(rop, op)) return false;
  if (dt == DType::kBool && *op != RedOp::kMax && *op != RedOp::kMin) return false;
  return !(*op == RedOp::kAvg && !is_floating(dt));
}

// The list forms of allgather / reduce_scatter: `size` CPU tensors shaped like `like`.
bool cpu_list_like(const std::vector<at::Tensor>& ts, const at::Tensor& like, int size) {
  if (static_cast<int>(ts.size()) != size) return false;
  for (const at::Tensor& t : ts)
    if (!t.defined() || !t.device().is_cpu() || t.layout() != at::kStrided || t.scalar_type() != like.scalar_type() ||
        t.sizes() != like.sizes())
      return false;
  return true;
}

// Staging copies run on whichever thread finishes the op: on detached aliases, so that
// autograd never sees them (a leaf that requires grad would refuse an in-place copy).
void copy_into(const at::Tensor& dst, const at::Tensor& src) { dst.detach().copy_(src.view(dst.sizes())); }

}  // namespace

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

// ---- FastAllreduceBackend ------------------------------------------------------------------

FastAllreduceBackend::FastAllreduceBackend(std::shared_ptr<Communicator> engine,
                                           c10::intrusive_ptr<c10d::Backend> delegate, int rank, int size,
                                           std::chrono::milliseconds timeout, Algo algo)
    : c10d::Backend(rank, size), engine_(std::move(engine)), gloo_(std::move(delegate)),
      options_(c10::make_intrusive<Options>("fastallreduce", timeout)), algo_(algo) {
  TORCH_CHECK(engine_ && gloo_, "fastallreduce backend needs an engine and a delegate backend");
  TORCH_CHECK(engine_->size() == size && gloo_->getSize() == size, "fastallreduce backend: group sizes differ");
}

FastAllreduceBackend::~FastAllreduceBackend() = default;

void FastAllreduceBackend::setTimeout(std::chrono::milliseconds timeout) {
  options_->timeout = timeout;
  gloo_->setTimeout(timeout);
}

bool FastAllreduceBackend::on_engine(const std::vector<at::Tensor>& tensors,
                                     const c10d::AllreduceOptions& opts) const {
  DType dt;
  RedOp op;
  return tensors.size() == 1 && engine_tensor(tensors[0], &dt) && engine_op(opts.reduceOp, dt, &op);
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::engine_run(Call call, c10d::OpType type, const char* title,
                                                                bool sync, std::vector<at::Tensor> outputs,
                                                                std::function<void()> finish, bool count) {
  call.algo = call.kind == Kind::kAllreduce ? algo_ : Algo::kShm;
  c10::intrusive_ptr<Future> engine_fut;
  try {
    if (sync) {
      // async_op=False: the caller waits at once, so the engine runs it on this thread when
      // nothing is queued (no hand-off to the worker and back; FIFO order holds either way).
      // The caller keeps its tensors alive throughout, so no reference here is ever the last.
      engine_->run(std::move(call));
      if (finish) finish();
      if (count) engine_ops_.fetch_add(1, std::memory_order_relaxed);
      return c10::make_intrusive<CompletedWork>(rank_, type, title, std::move(outputs));
    }
    // Async: detached aliases (same storage, no Python object), so that the worker thread drops
    // its references without the GIL, which the caller's thread usually holds by then.
    const bool in_place = call.output.is_same(call.input);
    call.input = call.input.detach();
    call.output = in_place ? call.input : call.output.detach();
    engine_fut = engine_->run_async(std::move(call));
  } catch (...) {
    std::rethrow_exception(as_dist_error(std::current_exception()));
  }
  if (count) engine_ops_.fetch_add(1, std::memory_order_relaxed);
  auto outs = outputs;
  return c10::make_intrusive<FutureWork>(as_list_future(engine_fut, std::move(outs), std::move(finish)), rank_, type,
                                         title, std::move(outputs));
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allreduce(std::vector<at::Tensor>& tensors,
                                                               const c10d::AllreduceOptions& opts) {
  if (on_engine(tensors, opts)) {
    Call call;
    call.input = tensors[0];
    call.output = tensors[0];
    to_redop(opts.reduceOp, &call.op);
    return engine_run(std::move(call), c10d::OpType::ALLREDUCE, nullptr, !opts.asyncOp, {tensors[0]});
  }
  if (opts.reduceOp == c10d::ReduceOp::AVG && tensors.size() == 1) {
    // Gloo has no AVG; say what is wrong rather than Gloo's generic refusal.
    const at::Tensor& t = tensors[0];
    if (!at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type()))
      C10_THROW_ERROR(TypeError, std::string("fastallreduce: ReduceOp.AVG needs a floating dtype, got ") +
                                     c10::toString(t.scalar_type()) + " (integer division would silently truncate; use SUM)");
    C10_THROW_ERROR(NotImplementedError,
                    std::string("fastallreduce: no ReduceOp.AVG path for a ") + c10::toString(t.scalar_type()) + " " +
                        t.device().str() + (t.is_contiguous() ? "" : " non-contiguous") + " tensor with layout " +
                        c10::str(t.layout()));
  }
  delegated_ops_.fetch_add(1, std::memory_order_relaxed);
  return track(gloo_->allreduce(tensors, opts));
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
  Call call;
  call.input = at::zeros({1}, at::TensorOptions().dtype(at::kByte));
  call.output = call.input;
  call.op = RedOp::kMax;
  auto flag = call.input;
  return engine_run(std::move(call), c10d::OpType::BARRIER, "fastallreduce:barrier", !opts.asyncOp, {flag}, {},
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
  engine_->close();
  gloo_->shutdown();
}

void FastAllreduceBackend::abort() {
  engine_->abort("torch.distributed abort");
  engine_->close();
  gloo_->abort();
}

// ---- delegated ----------------------------------------------------------------------------

#define FAR_DELEGATE(call)                                   \
  do {                                                       \
    delegated_ops_.fetch_add(1, std::memory_order_relaxed);  \
    return track(gloo_->call);                               \
  } while (0)

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::broadcast(std::vector<at::Tensor>& tensors,
                                                               const c10d::BroadcastOptions& opts) {
  DType dt;
  if (engine_->supports_gather_family() && tensors.size() == 1 && opts.rootTensor == 0 && opts.rootRank >= 0 &&
      opts.rootRank < size_ && engine_tensor(tensors[0], &dt)) {
    Call call;
    call.input = tensors[0];
    call.output = tensors[0];
    call.kind = Kind::kBroadcast;
    call.root = static_cast<int>(opts.rootRank);
    return engine_run(std::move(call), c10d::OpType::BROADCAST, nullptr, !opts.asyncOp, {tensors[0]});
  }
  FAR_DELEGATE(broadcast(tensors, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allreduce_sparse(std::vector<at::Tensor>& tensors,
                                                                      const c10d::AllreduceOptions& opts) {
  FAR_DELEGATE(allreduce_sparse(tensors, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allreduce_coalesced(
    std::vector<at::Tensor>& tensors, const c10d::AllreduceCoalescedOptions& opts) {
  FAR_DELEGATE(allreduce_coalesced(tensors, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::reduce(std::vector<at::Tensor>& tensors,
                                                            const c10d::ReduceOptions& opts) {
  FAR_DELEGATE(reduce(tensors, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::engine_allgather(at::Tensor& output, at::Tensor& input,
                                                                      c10d::OpType type, bool sync) {
  DType a, b;
  if (!engine_->supports_gather_family() || !engine_tensor(input, &a) || !engine_tensor(output, &b) ||
      input.scalar_type() != output.scalar_type() || output.numel() != input.numel() * size_)
    return {};
  Call call;
  call.input = input;
  call.output = output;
  call.kind = Kind::kAllgather;
  return engine_run(std::move(call), type, nullptr, sync, {output});
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allgather(std::vector<std::vector<at::Tensor>>& outputs,
                                                               std::vector<at::Tensor>& inputs,
                                                               const c10d::AllgatherOptions& opts) {
  // One input, a list of `size` outputs shaped like it: gather into one staging tensor on the
  // engine, then copy each rank's part out (the copies finish before the Work does).
  DType dt;
  if (engine_->supports_gather_family() && inputs.size() == 1 && outputs.size() == 1 &&
      engine_tensor(inputs[0], &dt) && cpu_list_like(outputs[0], inputs[0], size_)) {
    const int64_t n = inputs[0].numel();
    at::Tensor flat = at::empty({size_ * n}, inputs[0].options());
    Call call;
    call.input = inputs[0];
    call.output = flat;
    call.kind = Kind::kAllgather;
    std::vector<at::Tensor> outs = outputs[0];
    auto finish = [flat, outs, n] {
      for (size_t r = 0; r < outs.size(); ++r) copy_into(outs[r], flat.narrow(0, static_cast<int64_t>(r) * n, n));
    };
    return engine_run(std::move(call), c10d::OpType::ALLGATHER, nullptr, !opts.asyncOp, outputs[0], finish);
  }
  FAR_DELEGATE(allgather(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::all_gather_single(at::Tensor& output, at::Tensor& input,
                                                                       const c10d::AllgatherOptions& opts) {
  if (auto w = engine_allgather(output, input, c10d::OpType::_ALLGATHER_BASE, !opts.asyncOp)) return w;
  FAR_DELEGATE(all_gather_single(output, input, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::_allgather_base(at::Tensor& output, at::Tensor& input,
                                                                     const c10d::AllgatherOptions& opts) {
  if (auto w = engine_allgather(output, input, c10d::OpType::_ALLGATHER_BASE, !opts.asyncOp)) return w;
  FAR_DELEGATE(all_gather_single(output, input, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allgather_coalesced(
    std::vector<std::vector<at::Tensor>>& outputs, std::vector<at::Tensor>& inputs,
    const c10d::AllgatherOptions& opts) {
  FAR_DELEGATE(allgather_coalesced(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::all_gather_single_coalesced(
    std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs, const c10d::AllgatherOptions& opts) {
  FAR_DELEGATE(all_gather_single_coalesced(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allgather_into_tensor_coalesced(
    std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs, const c10d::AllgatherOptions& opts) {
  FAR_DELEGATE(all_gather_single_coalesced(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::gather(std::vector<std::vector<at::Tensor>>& outputs,
                                                            std::vector<at::Tensor>& inputs,
                                                            const c10d::GatherOptions& opts) {
  FAR_DELEGATE(gather(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::gather_single(at::Tensor& output, at::Tensor& input,
                                                                   const c10d::GatherOptions& opts) {
  FAR_DELEGATE(gather_single(output, input, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::gather_into_tensor(at::Tensor& output, at::Tensor& input,
                                                                        const c10d::GatherOptions& opts) {
  FAR_DELEGATE(gather_single(output, input, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::scatter(std::vector<at::Tensor>& outputs,
                                                             std::vector<std::vector<at::Tensor>>& inputs,
                                                             const c10d::ScatterOptions& opts) {
  FAR_DELEGATE(scatter(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::engine_reduce_scatter(at::Tensor& output, at::Tensor& input,
                                                                           c10d::OpType type,
                                                                           const c10d::ReduceScatterOptions& opts) {
  DType a, b;
  Call call;
  if (!engine_->supports_gather_family() || !engine_tensor(input, &a) || !engine_tensor(output, &b) ||
      input.scalar_type() != output.scalar_type() || input.numel() != output.numel() * size_ ||
      !engine_op(opts.reduceOp, a, &call.op))
    return {};
  call.input = input;
  call.output = output;
  call.kind = Kind::kReduceScatter;
  return engine_run(std::move(call), type, nullptr, !opts.asyncOp, {output});
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::reduce_scatter(std::vector<at::Tensor>& outputs,
                                                                    std::vector<std::vector<at::Tensor>>& inputs,
                                                                    const c10d::ReduceScatterOptions& opts) {
  // One output, a list of `size` inputs shaped like it: pack the inputs into one staging tensor
  // (here, before the call returns), then reduce-scatter it on the engine. Only calls the engine
  // takes are packed (the staging tensor is then always eligible).
  DType dt;
  RedOp op;
  if (engine_->supports_gather_family() && outputs.size() == 1 && inputs.size() == 1 &&
      engine_tensor(outputs[0], &dt) && engine_op(opts.reduceOp, dt, &op) &&
      cpu_list_like(inputs[0], outputs[0], size_)) {
    const int64_t n = outputs[0].numel();
    at::Tensor flat = at::empty({size_ * n}, outputs[0].options());
    for (int r = 0; r < size_; ++r) copy_into(flat.narrow(0, r * n, n), inputs[0][r].reshape({-1}));
    return engine_reduce_scatter(outputs[0], flat, c10d::OpType::REDUCE_SCATTER, opts);
  }
  FAR_DELEGATE(reduce_scatter(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::reduce_scatter_single(at::Tensor& output, at::Tensor& input,
                                                                           const c10d::ReduceScatterOptions& opts) {
  if (auto w = engine_reduce_scatter(output, input, c10d::OpType::_REDUCE_SCATTER_BASE, opts)) return w;
  FAR_DELEGATE(reduce_scatter_single(output, input, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::_reduce_scatter_base(at::Tensor& output, at::Tensor& input,
                                                                          const c10d::ReduceScatterOptions& opts) {
  if (auto w = engine_reduce_scatter(output, input, c10d::OpType::_REDUCE_SCATTER_BASE, opts)) return w;
  FAR_DELEGATE(reduce_scatter_single(output, input, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::reduce_scatter_single_coalesced(
    std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs, const c10d::ReduceScatterOptions& opts) {
  FAR_DELEGATE(reduce_scatter_single_coalesced(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::reduce_scatter_tensor_coalesced(
    std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs, const c10d::ReduceScatterOptions& opts) {
  FAR_DELEGATE(reduce_scatter_single_coalesced(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::all_to_all_single(at::Tensor& output, at::Tensor& input,
                                                                       std::vector<int64_t>& output_splits,
                                                                       std::vector<int64_t>& input_splits,
                                                                       const c10d::AllToAllOptions& opts) {
  FAR_DELEGATE(all_to_all_single(output, input, output_splits, input_splits, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::alltoall_base(at::Tensor& output, at::Tensor& input,
                                                                   std::vector<int64_t>& output_splits,
                                                                   std::vector<int64_t>& input_splits,
                                                                   const c10d::AllToAllOptions& opts) {
  FAR_DELEGATE(all_to_all_single(output, input, output_splits, input_splits, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::alltoall(std::vector<at::Tensor>& outputs,
                                                              std::vector<at::Tensor>& inputs,
                                                              const c10d::AllToAllOptions& opts) {
  FAR_DELEGATE(alltoall(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::send(std::vector<at::Tensor>& tensors, int dst, int tag) {
  FAR_DELEGATE(send(tensors, dst, tag));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::recv(std::vector<at::Tensor>& tensors, int src, int tag) {
  FAR_DELEGATE(recv(tensors, src, tag));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::recvAnysource(std::vector<at::Tensor>& tensors, int tag) {
  FAR_DELEGATE(recvAnysource(tensors, tag));
}

#undef FAR_DELEGATE

void FastAllreduceBackend::monitoredBarrier(const c10d::BarrierOptions& opts, bool wait_all_ranks) {
  gloo_->monitoredBarrier(opts, wait_all_ranks);
}

uint64_t FastAllreduceBackend::getSequenceNumberForGroup() { return gloo_->getSequenceNumberForGroup(); }

void FastAllreduceBackend::enableCollectivesTiming() { gloo_->enableCollectivesTiming(); }

}  // namespace far
