// The entry points of the collectives the engine may run: on the engine where its planner takes
// the call, else header-checked and delegated.
#include "backend/backend.h"

#include "backend/c10d_adapt.h"
#include "common/errors.h"
#include "common/torch_compat.h"

namespace far {
namespace {

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

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::allreduce(std::vector<at::Tensor>& tensors,
                                                               const c10d::AllreduceOptions& opts) {
  if (tensors.size() == 1 && engine_takes(Kind::kAllreduce, tensors[0], opts.reduceOp)) {
    Collective c;
    c.input = tensors[0];
    c.op = *to_redop(opts.reduceOp);
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

c10::intrusive_ptr<c10d::Work> FastAllreduceBackend::engine_reduce_scatter(at::Tensor& output, at::Tensor& input,
                                                                           c10d::OpType type,
                                                                           const c10d::ReduceScatterOptions& opts) {
  if (!engine_takes(Kind::kReduceScatter, output, opts.reduceOp)) return {};
  Collective c;
  c.kind = Kind::kReduceScatter;
  c.input = input;
  c.output = output;
  c.op = *to_redop(opts.reduceOp);
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

}  // namespace far
