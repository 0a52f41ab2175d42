// The entry points of the collectives the engine never runs: each is header-checked across
// ranks on the engine (FIFO with its own calls), then runs on the delegate (backend.h).
#include "backend/backend.h"

#include "backend/c10d_adapt.h"
#include "common/torch_compat.h"

namespace far {

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


}  // namespace far
