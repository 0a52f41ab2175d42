#include "backend/backend.h"

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <algorithm>
#include <numeric>

#include "common/aten.h"
#include "common/errors.h"
#include "common/torch_compat.h"
#include "backend/without_gil.h"

namespace far {
namespace {

using c10::ivalue::Future;

// Engine faults reach torch users as torch.distributed.DistBackendError (what torch raises for a
// failed or timed-out collective), with the fastallreduce class name kept in the message;
// rejected arguments as the Python class the engine chose (TypeError, ValueError, ...).
std::exception_ptr as_dist_error(std::exception_ptr e) {
  const c10::SourceLocation here{__func__, __FILE__, static_cast<uint32_t>(__LINE__)};
  try {
    std::rethrow_exception(e);
  } catch (const c10::Error&) {
    return std::current_exception();
  } catch (const ArgError& x) {
    if (x.type == ArgError::kType) return std::make_exception_ptr(c10::TypeError(here, x.what()));
    if (x.type == ArgError::kValue) return std::make_exception_ptr(c10::ValueError(here, x.what()));
    return std::make_exception_ptr(c10::NotImplementedError(here, x.what()));
  } catch (const MismatchError& x) {
    return std::make_exception_ptr(c10::DistBackendError(here, std::string("fastallreduce MismatchError: ") + x.what()));
  } catch (const CommTimeoutError& x) {
    return std::make_exception_ptr(c10::DistBackendError(here, std::string("fastallreduce CommTimeoutError: ") + x.what()));
  } catch (const ClosedError& x) {
    return std::make_exception_ptr(c10::DistBackendError(here, std::string("fastallreduce ClosedError: ") + x.what()));
  } catch (const std::exception& x) {
    return std::make_exception_ptr(c10::DistBackendError(here, std::string("fastallreduce: ") + x.what()));
  }
}

[[noreturn]] void rethrow_as_dist_error() { std::rethrow_exception(as_dist_error(std::current_exception())); }

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

// The header's op of a delegated call (ops the engine has no code for share one value).
RedOp header_op(const c10d::ReduceOp& op) {
  RedOp r;
  return to_redop(op, &r) ? r : static_cast<RedOp>(kNumOps);
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

int64_t total_numel(const std::vector<at::Tensor>& ts) {
  return std::accumulate(ts.begin(), ts.end(), int64_t(0), [](int64_t a, const at::Tensor& t) { return a + t.numel(); });
}

// torch gives every incarnation of a group the same store prefix: a group destroyed and made
// again on the same store (an in-process restart) would read the previous one's keys (segment
// names, Gloo addresses, attach counts, abort records). Each incarnation gets its own namespace:
// every rank counts itself in, and all `size` ranks of one incarnation count in before any rank
// can finish making it (the engine's constructor waits for all of them), so (count - 1) / size
// is the same number on every rank.
c10::intrusive_ptr<c10d::Store> incarnation_store(const c10::intrusive_ptr<c10d::Store>& store, int size) {
  const int64_t generation = (store->add("fastallreduce/incarnations", 1) - 1) / size;
  return c10::make_intrusive<c10d::PrefixStore>("fastallreduce/" + std::to_string(generation) + "/", store);
}

at::ScalarType dtype_of(const std::vector<at::Tensor>& ts) { return ts.empty() ? at::kByte : ts[0].scalar_type(); }
c10::DeviceType device_of(const std::vector<at::Tensor>& ts) { return ts.empty() ? c10::kCPU : ts[0].device().type(); }

}  // namespace

FastAllreduceBackend::FastAllreduceBackend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                           std::chrono::milliseconds timeout, Algo algo,
                                           const BackendFactory& make_backend, const std::string& local_error,
                                           BackendFactory make_nccl)
    : c10d::Backend(rank, size), options_(c10::make_intrusive<Options>("fastallreduce", timeout)), algo_(algo) {
  CommOptions o;
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
  RedOp r;
  const std::optional<DType> dt = t.defined() ? to_dtype(t.scalar_type()) : std::nullopt;
  if (!dt || !t.device().is_cpu() || t.layout() != at::kStrided) return false;
  if (kind == Kind::kAllreduce || kind == Kind::kReduceScatter) {
    // Reductions the kernels have no arithmetic for keep Gloo's behaviour (and errors).
    if (!to_redop(op, &r)) return false;
    if (*dt == DType::kBool && r != RedOp::kMax && r != RedOp::kMin) return false;
    if (r == RedOp::kAvg && !is_floating(*dt)) return false;
  }
  return kind == Kind::kAllreduce || engine_->single_host();
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::engine_run(Collective c, c10d::OpType type, const char* title,
                                                                bool sync, std::vector<at::Tensor> outputs,
                                                                std::function<void()> finish, bool count) {
  if (c.kind == Kind::kAllreduce) c.algo = algo_;
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

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allreduce(std::vector<at::Tensor>& tensors,
                                                               const c10d::AllreduceOptions& opts) {
  if (tensors.size() == 1 && engine_takes(Kind::kAllreduce, tensors[0], opts.reduceOp)) {
    Collective c;
    c.input = tensors[0];
    to_redop(opts.reduceOp, &c.op);
    return engine_run(std::move(c), c10d::OpType::ALLREDUCE, nullptr, !opts.asyncOp, {tensors[0]});
  }
  const at::Tensor* avg = opts.reduceOp == c10d::ReduceOp::AVG && tensors.size() == 1 ? &tensors[0] : nullptr;
  if (avg && (avg->device().is_cpu() || !at::isFloatingType(avg->scalar_type()))) {
    // Gloo has no AVG (NCCL has, for floating dtypes): say what is wrong rather than Gloo's
    // generic refusal, on every rank.
    const at::Tensor& t = *avg;
    const bool integral = !at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type());
    const std::string what = integral ? std::string("fastallreduce: ReduceOp.AVG needs a floating dtype, got ") +
                                            c10::toString(t.scalar_type()) +
                                            " (integer division would silently truncate; use SUM)"
                                      : std::string("fastallreduce: no ReduceOp.AVG path for a ") +
                                            c10::toString(t.scalar_type()) + " " + t.device().str() +
                                            " tensor with layout " + c10::str(t.layout());
    try {
      engine_->reject(integral ? type_error(what) : not_implemented(what));
    } catch (...) {
      rethrow_as_dist_error();
    }
  }
  Delegated d{Kind::kAllreduce, header_op(opts.reduceOp), 0, dtype_of(tensors), total_numel(tensors),
              device_of(tensors)};
  return run_delegated(d, [&](c10d::Backend& b) { return b.allreduce(tensors, opts); });
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

// ---- every other entry point --------------------------------------------------------------

// A call the engine does not run: its header (logical kind, op, root, dtype, count) is checked
// across ranks on the engine first, then Gloo runs it.
#define FAR_DELEGATE(KIND, OP, ROOT, DTYPE, COUNT, DEVICE, CALL)            \
  return run_delegated(Delegated{KIND, OP, ROOT, DTYPE, COUNT, DEVICE}, \
                       [&](c10d::Backend& b) { return CALL; })

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::broadcast(std::vector<at::Tensor>& tensors,
                                                               const c10d::BroadcastOptions& opts) {
  if (tensors.size() == 1 && opts.rootTensor == 0 && engine_takes(Kind::kBroadcast, tensors[0], c10d::ReduceOp::SUM)) {
    Collective c;
    c.kind = Kind::kBroadcast;
    c.input = tensors[0];
    c.root = static_cast<int>(opts.rootRank);
    return engine_run(std::move(c), c10d::OpType::BROADCAST, nullptr, !opts.asyncOp, {tensors[0]});
  }
  FAR_DELEGATE(Kind::kBroadcast, RedOp::kSum, static_cast<int>(opts.rootRank), dtype_of(tensors), total_numel(tensors),
               device_of(tensors), b.broadcast(tensors, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allreduce_sparse(std::vector<at::Tensor>& tensors,
                                                                      const c10d::AllreduceOptions& opts) {
  // Sparse tensors: ranks hold different numbers of values, so only the kind, op and dtype agree.
  FAR_DELEGATE(Kind::kAllreduce, header_op(opts.reduceOp), 0, dtype_of(tensors), 0, device_of(tensors),
               b.allreduce_sparse(tensors, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allreduce_coalesced(
    std::vector<at::Tensor>& tensors, const c10d::AllreduceCoalescedOptions& opts) {
  FAR_DELEGATE(Kind::kCoalesced, header_op(opts.reduceOp), 0, dtype_of(tensors), total_numel(tensors),
               device_of(tensors), b.allreduce_coalesced(tensors, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::reduce(std::vector<at::Tensor>& tensors,
                                                            const c10d::ReduceOptions& opts) {
  FAR_DELEGATE(Kind::kReduce, header_op(opts.reduceOp), static_cast<int>(opts.rootRank), dtype_of(tensors),
               total_numel(tensors), device_of(tensors), b.reduce(tensors, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::engine_allgather(at::Tensor& output, at::Tensor& input,
                                                                      c10d::OpType type, bool sync) {
  if (!engine_takes(Kind::kAllgather, input, c10d::ReduceOp::SUM)) return {};
  Collective c;
  c.kind = Kind::kAllgather;
  c.input = input;
  c.output = output;
  return engine_run(std::move(c), type, nullptr, sync, {output});
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allgather(std::vector<std::vector<at::Tensor>>& outputs,
                                                               std::vector<at::Tensor>& inputs,
                                                               const c10d::AllgatherOptions& opts) {
  // One input, a list of `size` outputs shaped like it: gather into one staging tensor on the
  // engine, then copy each rank's part out (the copies finish before the Work does).
  if (inputs.size() == 1 && outputs.size() == 1 && engine_takes(Kind::kAllgather, inputs[0], c10d::ReduceOp::SUM) &&
      cpu_list_like(outputs[0], inputs[0], size_)) {
    const int64_t n = inputs[0].numel();
    at::Tensor flat = at::empty({size_ * n}, inputs[0].options());
    Collective c;
    c.kind = Kind::kAllgather;
    c.input = inputs[0];
    c.output = flat;
    std::vector<at::Tensor> outs = outputs[0];
    auto finish = [flat, outs, n] {
      for (size_t r = 0; r < outs.size(); ++r) copy_into(outs[r], flat.narrow(0, static_cast<int64_t>(r) * n, n));
    };
    return engine_run(std::move(c), c10d::OpType::ALLGATHER, nullptr, !opts.asyncOp, outputs[0], finish);
  }
  FAR_DELEGATE(Kind::kAllgather, RedOp::kSum, 0, dtype_of(inputs), total_numel(inputs), device_of(inputs),
               b.allgather(outputs, inputs, opts));
}
#if FAR_TORCH_SINGLE_NAMES
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::all_gather_single(at::Tensor& output, at::Tensor& input,
                                                                       const c10d::AllgatherOptions& opts) {
  if (auto w = engine_allgather(output, input, c10d::OpType::_ALLGATHER_BASE, !opts.asyncOp)) return w;
  FAR_DELEGATE(Kind::kAllgather, RedOp::kSum, 0, input.scalar_type(), input.numel(), input.device().type(),
               torch_compat::all_gather_single(b, output, input, opts));
}
#endif
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::_allgather_base(at::Tensor& output, at::Tensor& input,
                                                                     const c10d::AllgatherOptions& opts) {
  if (auto w = engine_allgather(output, input, c10d::OpType::_ALLGATHER_BASE, !opts.asyncOp)) return w;
  FAR_DELEGATE(Kind::kAllgather, RedOp::kSum, 0, input.scalar_type(), input.numel(), input.device().type(),
               torch_compat::all_gather_single(b, output, input, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allgather_coalesced(
    std::vector<std::vector<at::Tensor>>& outputs, std::vector<at::Tensor>& inputs,
    const c10d::AllgatherOptions& opts) {
  FAR_DELEGATE(Kind::kCoalesced, RedOp::kSum, 0, dtype_of(inputs), total_numel(inputs), device_of(inputs),
               b.allgather_coalesced(outputs, inputs, opts));
}
#if FAR_TORCH_SINGLE_NAMES
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::all_gather_single_coalesced(
    std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs, const c10d::AllgatherOptions& opts) {
  FAR_DELEGATE(Kind::kCoalesced, RedOp::kSum, 0, dtype_of(inputs), total_numel(inputs), device_of(inputs),
               torch_compat::all_gather_single_coalesced(b, outputs, inputs, opts));
}
#endif
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allgather_into_tensor_coalesced(
    std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs, const c10d::AllgatherOptions& opts) {
  FAR_DELEGATE(Kind::kCoalesced, RedOp::kSum, 0, dtype_of(inputs), total_numel(inputs), device_of(inputs),
               torch_compat::all_gather_single_coalesced(b, outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::gather(std::vector<std::vector<at::Tensor>>& outputs,
                                                            std::vector<at::Tensor>& inputs,
                                                            const c10d::GatherOptions& opts) {
  FAR_DELEGATE(Kind::kGather, RedOp::kSum, static_cast<int>(opts.rootRank), dtype_of(inputs), total_numel(inputs),
               device_of(inputs), b.gather(outputs, inputs, opts));
}
#if FAR_TORCH_SINGLE_NAMES
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::gather_single(at::Tensor& output, at::Tensor& input,
                                                                   const c10d::GatherOptions& opts) {
  FAR_DELEGATE(Kind::kGather, RedOp::kSum, static_cast<int>(opts.rootRank), input.scalar_type(), input.numel(),
               input.device().type(), b.gather_single(output, input, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::gather_into_tensor(at::Tensor& output, at::Tensor& input,
                                                                        const c10d::GatherOptions& opts) {
  FAR_DELEGATE(Kind::kGather, RedOp::kSum, static_cast<int>(opts.rootRank), input.scalar_type(), input.numel(),
               input.device().type(), b.gather_single(output, input, opts));
}
#endif
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::scatter(std::vector<at::Tensor>& outputs,
                                                             std::vector<std::vector<at::Tensor>>& inputs,
                                                             const c10d::ScatterOptions& opts) {
  FAR_DELEGATE(Kind::kScatter, RedOp::kSum, static_cast<int>(opts.rootRank), dtype_of(outputs), total_numel(outputs),
               device_of(outputs), b.scatter(outputs, inputs, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::engine_reduce_scatter(at::Tensor& output, at::Tensor& input,
                                                                           c10d::OpType type,
                                                                           const c10d::ReduceScatterOptions& opts) {
  if (!engine_takes(Kind::kReduceScatter, output, opts.reduceOp)) return {};
  Collective c;
  c.kind = Kind::kReduceScatter;
  c.input = input;
  c.output = output;
  to_redop(opts.reduceOp, &c.op);
  return engine_run(std::move(c), type, nullptr, !opts.asyncOp, {output});
}

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::reduce_scatter(std::vector<at::Tensor>& outputs,
                                                                    std::vector<std::vector<at::Tensor>>& inputs,
                                                                    const c10d::ReduceScatterOptions& opts) {
  // One output, a list of `size` inputs shaped like it: pack the inputs into one staging tensor
  // (here, before the call returns), then reduce-scatter it on the engine. Only calls the engine
  // takes are packed.
  if (outputs.size() == 1 && inputs.size() == 1 && engine_takes(Kind::kReduceScatter, outputs[0], opts.reduceOp) &&
      cpu_list_like(inputs[0], outputs[0], size_)) {
    const int64_t n = outputs[0].numel();
    at::Tensor flat = at::empty({size_ * n}, outputs[0].options());
    for (int r = 0; r < size_; ++r) copy_into(flat.narrow(0, r * n, n), inputs[0][r].reshape({-1}));
    return engine_reduce_scatter(outputs[0], flat, c10d::OpType::REDUCE_SCATTER, opts);
  }
  FAR_DELEGATE(Kind::kReduceScatter, header_op(opts.reduceOp), 0, dtype_of(outputs), total_numel(outputs),
               device_of(outputs), b.reduce_scatter(outputs, inputs, opts));
}
#if FAR_TORCH_SINGLE_NAMES
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::reduce_scatter_single(at::Tensor& output, at::Tensor& input,
                                                                           const c10d::ReduceScatterOptions& opts) {
  if (auto w = engine_reduce_scatter(output, input, c10d::OpType::_REDUCE_SCATTER_BASE, opts)) return w;
  FAR_DELEGATE(Kind::kReduceScatter, header_op(opts.reduceOp), 0, output.scalar_type(), output.numel(),
               output.device().type(), torch_compat::reduce_scatter_single(b, output, input, opts));
}
#endif
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::_reduce_scatter_base(at::Tensor& output, at::Tensor& input,
                                                                          const c10d::ReduceScatterOptions& opts) {
  if (auto w = engine_reduce_scatter(output, input, c10d::OpType::_REDUCE_SCATTER_BASE, opts)) return w;
  FAR_DELEGATE(Kind::kReduceScatter, header_op(opts.reduceOp), 0, output.scalar_type(), output.numel(),
               output.device().type(), torch_compat::reduce_scatter_single(b, output, input, opts));
}
#if FAR_TORCH_SINGLE_NAMES
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::reduce_scatter_single_coalesced(
    std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs, const c10d::ReduceScatterOptions& opts) {
  FAR_DELEGATE(Kind::kCoalesced, header_op(opts.reduceOp), 0, dtype_of(outputs), total_numel(outputs),
               device_of(outputs), torch_compat::reduce_scatter_single_coalesced(b, outputs, inputs, opts));
}
#endif
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::reduce_scatter_tensor_coalesced(
    std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs, const c10d::ReduceScatterOptions& opts) {
  FAR_DELEGATE(Kind::kCoalesced, header_op(opts.reduceOp), 0, dtype_of(outputs), total_numel(outputs),
               device_of(outputs), torch_compat::reduce_scatter_single_coalesced(b, outputs, inputs, opts));
}
// all_to_all: ranks may split differently, so the element count is not compared.
#if FAR_TORCH_SINGLE_NAMES
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::all_to_all_single(at::Tensor& output, at::Tensor& input,
                                                                       std::vector<int64_t>& output_splits,
                                                                       std::vector<int64_t>& input_splits,
                                                                       const c10d::AllToAllOptions& opts) {
  FAR_DELEGATE(Kind::kAllToAll, RedOp::kSum, 0, input.scalar_type(), 0, input.device().type(),
               torch_compat::all_to_all_single(b, output, input, output_splits, input_splits, opts));
}
#endif
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::alltoall_base(at::Tensor& output, at::Tensor& input,
                                                                   std::vector<int64_t>& output_splits,
                                                                   std::vector<int64_t>& input_splits,
                                                                   const c10d::AllToAllOptions& opts) {
  FAR_DELEGATE(Kind::kAllToAll, RedOp::kSum, 0, input.scalar_type(), 0, input.device().type(),
               torch_compat::all_to_all_single(b, output, input, output_splits, input_splits, opts));
}
c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::alltoall(std::vector<at::Tensor>& outputs,
                                                              std::vector<at::Tensor>& inputs,
                                                              const c10d::AllToAllOptions& opts) {
  FAR_DELEGATE(Kind::kAllToAll, RedOp::kSum, 0, dtype_of(inputs), 0, device_of(inputs), b.alltoall(outputs, inputs,
               opts)); }

#undef FAR_DELEGATE

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
