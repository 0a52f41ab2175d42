// How the engine gets its point-to-point backends (Gloo): a factory its creator supplies. torch's
// wheels do not ship Gloo's headers, so a ProcessGroupGloo is made where torch can make one (the
// Python binding passes torch.distributed.ProcessGroupGloo).
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <functional>

namespace far {

using BackendFactory = std::function<c10::intrusive_ptr<c10d::Backend>(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, std::chrono::milliseconds timeout)>;

}  // namespace far
