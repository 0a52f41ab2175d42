// Turns the Python-side lists of an SGD step into kernel descriptors. Tensors a kernel cannot
// take (other device, dtype or layout) are left out and reported, so that the caller updates
// them another way; the checks cost nanoseconds here against microseconds in Python.
// Shared by the CPU binding (bindings/sgd.cpp) and the CUDA one (cuda/sgd_cuda.cpp).
#pragma once
#include <torch/extension.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/aten.h"
#include "kernels/sgd.h"

namespace far {

inline std::optional<DType> sgd_dtype(at::ScalarType t) { return to_float_dtype(t); }

// `other` covers the same memory layout as `param`: the kernel treats both as flat arrays.
inline bool sgd_same_layout(const at::Tensor& param, const at::Tensor& other) {
  return other.layout() == at::kStrided && other.scalar_type() == param.scalar_type() &&
         other.device() == param.device() && other.sizes() == param.sizes() && other.strides() == param.strides() &&
         !other.is_conj() && !other.is_neg();
}

struct SgdBatch {
  std::vector<SgdTensor> tensors;
  std::vector<int64_t> skipped;  // positions left for the caller
};

// Collects the tensors on `device` (a CUDA call also pins one device index: the first seen).
inline SgdBatch sgd_collect(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                            const std::vector<c10::optional<at::Tensor>>& bufs, const std::vector<bool>& init_buf,
                            bool momentum, c10::DeviceType device, c10::optional<c10::Device>* pinned = nullptr) {
  const size_t n = params.size();
  if (grads.size() != n || (momentum && (bufs.size() != n || init_buf.size() != n)))
    throw pybind11::value_error("fastallreduce: SGD kernel: params, grads, momentum buffers and init flags differ in length");
  SgdBatch out;
  out.tensors.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    if (g.is_sparse() || g.layout() != at::kStrided)
      throw std::runtime_error("fastallreduce.optim.SGD does not support sparse gradients; use torch.optim.SGD for "
                               "sparse parameters");
    const std::optional<DType> dt = sgd_dtype(p.scalar_type());
    bool ok = dt && p.device().type() == device && p.layout() == at::kStrided && !p.is_conj() && !p.is_neg() &&
              p.is_non_overlapping_and_dense() && sgd_same_layout(p, g);
    if (ok && pinned) {
      if (!*pinned) *pinned = p.device();
      ok = p.device() == **pinned;
    }
    const bool init = momentum && init_buf[i];
    if (ok && momentum) {
      if (!bufs[i]) throw pybind11::value_error("fastallreduce: SGD kernel: momentum buffer " + std::to_string(i) + " is None");
      ok = sgd_same_layout(p, *bufs[i]);
    }
    if (!ok) {
      out.skipped.push_back(static_cast<int64_t>(i));
      continue;
    }
    SgdTensor t;
    t.param = p.data_ptr();
    t.grad = g.data_ptr();
    t.buf = momentum ? bufs[i]->data_ptr() : nullptr;
    t.numel = p.numel();
    t.dtype = *dt;
    t.init_buf = init;
    out.tensors.push_back(t);
  }
  return out;
}

inline SgdParams sgd_params(double lr, double momentum, double dampening, double weight_decay, bool nesterov,
                            bool maximize, bool lr_in_momentum, double momentum_scale, bool fma) {
  SgdParams p;
  p.lr = lr;
  p.momentum = momentum;
  p.dampening = dampening;
  p.weight_decay = weight_decay;
  p.nesterov = nesterov;
  p.maximize = maximize;
  p.form = lr_in_momentum ? SgdForm::kLrInMomentum : SgdForm::kTorch;
  p.momentum_scale = momentum_scale;
  p.fma = fma;
  return p;
}

}  // namespace far
