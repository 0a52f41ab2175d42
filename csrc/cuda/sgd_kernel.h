// Multi-tensor SGD(-momentum) update on a CUDA device: the math of kernels/sgd.h, for many
// tensors in few launches (chunk -> tensor metadata packed into the kernel arguments).
// Plain C++ interface, no torch headers, so the .cu compiles quickly.
#pragma once
#include <cstddef>

#include "kernels/sgd.h"

namespace far::cuda {

// Enqueues the update of every tensor on `stream` (a cudaStream_t) of the current device; all
// pointers must be device memory of that device. Asynchronous like any kernel launch.
// Throws std::runtime_error when a launch fails, std::invalid_argument for an unsupported dtype.
// Rounding: fused multiply-adds in the same places as the CPU kernel with fma = true.
void sgd_step_cuda(const SgdTensor* tensors, size_t count, const SgdParams& params, void* stream);

}  // namespace far::cuda
