// Translations between torch.distributed's types and the engine's: reduce ops, errors, futures,
// tensor lists, and the store namespace of each incarnation of a group.
#pragma once
#include <ATen/core/ivalue.h>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>

#include <exception>
#include <functional>
#include <optional>
#include <vector>

#include "common/types.h"

namespace far {

// Engine faults reach torch users as torch.distributed.DistBackendError (what torch raises for a
// failed or timed-out collective), with the fastallreduce class name kept in the message;
// rejected arguments as the Python class the engine chose (TypeError, ValueError, ...).
std::exception_ptr as_dist_error(std::exception_ptr e);
// The exception being handled, as as_dist_error makes it.
[[noreturn]] void rethrow_as_dist_error();

// The engine's op for torch's (nullopt: one the kernels have no code for).
std::optional<RedOp> to_redop(const c10d::ReduceOp& op);
// The header's op of a delegated call (ops the engine has no code for share one value).
RedOp header_op(const c10d::ReduceOp& op);

// The engine's future yields the output tensor; torch's collectives yield a list of tensors.
// `finish` (may be empty) runs after the op and before the list future completes.
c10::intrusive_ptr<c10::ivalue::Future> as_list_future(const c10::intrusive_ptr<c10::ivalue::Future>& engine_fut,
                                                       std::vector<at::Tensor> outs, std::function<void()> finish);

// What a delegated call's header says about a tensor list.
int64_t total_numel(const std::vector<at::Tensor>& ts);
at::ScalarType dtype_of(const std::vector<at::Tensor>& ts);
c10::DeviceType device_of(const std::vector<at::Tensor>& ts);

// The store namespace of this incarnation of a group made on `store` (c10d_adapt.cpp).
c10::intrusive_ptr<c10d::Store> incarnation_store(const c10::intrusive_ptr<c10d::Store>& store, int size);

}  // namespace far
