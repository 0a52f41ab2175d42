// Turns the Python-side lists of an SGD step into kernel descriptors, checking everything the
// kernels take for granted. Shared by the CPU binding (bindings/sgd.cpp) and the CUDA one
// (cuda/sgd_cuda.cpp).
#pragma once
#include <torch/extension.h>

#include <string>
#include <vector>

#include "kernels/sgd.h"

namespace far {

inline DType sgd_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      throw pybind11::type_error(std::string("fastallreduce: SGD kernel supports float32/float64/float16/bfloat16, got ") +
                                 c10::toString(t.scalar_type()));
  }
}

// `other` must cover the same memory layout as `param` (same dtype, device, sizes and strides).
inline void sgd_check_like(const at::Tensor& param, const at::Tensor& other, const char* what, size_t i) {
  if (other.layout() != at::kStrided)
    throw pybind11::type_error("fastallreduce: SGD kernel: " + std::string(what) + " " + std::to_string(i) +
                               " is sparse / non-strided; sparse gradients are not supported");
  if (other.scalar_type() != param.scalar_type() || other.device() != param.device() ||
      other.sizes() != param.sizes() || other.strides() != param.strides())
    throw pybind11::value_error("fastallreduce: SGD kernel: " + std::string(what) + " " + std::to_string(i) +
                                " differs from its parameter in dtype, device, shape or strides");
}

inline std::vector<SgdTensor> sgd_collect(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                                          const std::vector<c10::optional<at::Tensor>>& bufs,
                                          const std::vector<bool>& init_buf, bool momentum, c10::DeviceType device) {
  const size_t n = params.size();
  if (grads.size() != n || (momentum && (bufs.size() != n || init_buf.size() != n)))
    throw pybind11::value_error("fastallreduce: SGD kernel: params, grads, momentum buffers and init flags differ in length");
  std::vector<SgdTensor> out(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    if (p.device().type() != device)
      throw pybind11::value_error("fastallreduce: SGD kernel: param " + std::to_string(i) + " is on " + p.device().str());
    if (p.layout() != at::kStrided || !p.is_non_overlapping_and_dense())
      throw pybind11::value_error("fastallreduce: SGD kernel: param " + std::to_string(i) +
                                  " is not dense (non-overlapping, strided)");
    if (p.is_conj() || p.is_neg()) throw pybind11::value_error("fastallreduce: SGD kernel: lazy conj/neg bit on param");
    sgd_check_like(p, grads[i], "grad", i);
    SgdTensor& t = out[i];
    t.dtype = sgd_dtype(p);
    t.param = p.data_ptr();
    t.grad = grads[i].data_ptr();
    t.numel = p.numel();
    t.buf = nullptr;
    t.init_buf = false;
    if (momentum) {
      if (!bufs[i]) throw pybind11::value_error("fastallreduce: SGD kernel: momentum buffer " + std::to_string(i) + " is None");
      sgd_check_like(p, *bufs[i], "momentum buffer", i);
      t.buf = bufs[i]->data_ptr();
      t.init_buf = init_buf[i];
    }
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
