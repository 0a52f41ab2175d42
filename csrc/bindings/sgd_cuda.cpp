// Python binding of the CUDA multi-tensor SGD kernel: _C.sgd_step_cuda. Compiled to nothing
// unless the extension is built with CUDA (FASTALLREDUCE_WITH_CUDA).
#ifdef FASTALLREDUCE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "bindings/registry.h"
#include "bindings/sgd_args.h"
#include "cuda/sgd_kernel.h"

namespace py = pybind11;

namespace far {
namespace {

// Updates the CUDA tensors it can take (all on one device: the first one's); returns the others' positions.
std::vector<int64_t> sgd_step_cuda_py(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                      const std::vector<c10::optional<at::Tensor>>& bufs, const std::vector<bool>& init_buf,
                      double lr, double momentum, double dampening, double weight_decay, bool nesterov,
                      bool maximize, bool lr_in_momentum, double momentum_scale) {
  c10::optional<c10::Device> dev;
  SgdBatch batch = sgd_collect(params, grads, bufs, init_buf, momentum != 0, c10::DeviceType::CUDA, &dev);
  if (batch.tensors.empty()) return batch.skipped;
  const SgdParams p = sgd_params(lr, momentum, dampening, weight_decay, nesterov, maximize, lr_in_momentum,
                                 momentum_scale, /*fma=*/true);
  c10::cuda::CUDAGuard guard(*dev);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev->index()).stream();
  {
    py::gil_scoped_release nogil;
    cuda::sgd_step_cuda(batch.tensors.data(), batch.tensors.size(), p, stream);
  }
  return batch.skipped;
}

void bind(py::module& m) {
  m.def("sgd_step_cuda", &sgd_step_cuda_py,
        "Fused multi-tensor SGD(-momentum) update of CUDA tensors on the current stream (see csrc/cuda/sgd_kernel.h).",
        py::arg("params"), py::arg("grads"), py::arg("bufs"), py::arg("init_buf"), py::arg("lr"), py::arg("momentum"),
        py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"),
        py::arg("lr_in_momentum"), py::arg("momentum_scale"));
}

RegisterBindings reg(&bind);

}  // namespace
}  // namespace far
#endif  // FASTALLREDUCE_WITH_CUDA
