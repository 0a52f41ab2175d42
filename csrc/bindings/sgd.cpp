// Python binding of the CPU multi-tensor SGD kernel: _C.sgd_step_cpu.
#include <torch/extension.h>

#include "bindings/registry.h"
#include "bindings/sgd_args.h"
#include "kernels/sgd.h"

namespace py = pybind11;

namespace far {
namespace {

// Updates the CPU tensors it can take; returns the positions of the others.
std::vector<int64_t> sgd_step_cpu(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                  const std::vector<c10::optional<at::Tensor>>& bufs, const std::vector<bool>& init_buf, double lr,
                  double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                  bool lr_in_momentum, double momentum_scale, bool fma, int threads) {
  SgdBatch batch = sgd_collect(params, grads, bufs, init_buf, momentum != 0, c10::DeviceType::CPU);
  const SgdParams p = sgd_params(lr, momentum, dampening, weight_decay, nesterov, maximize, lr_in_momentum,
                                 momentum_scale, fma);
  {
    py::gil_scoped_release nogil;
    sgd_step(batch.tensors.data(), batch.tensors.size(), p, threads);
  }
  return batch.skipped;
}

void bind(py::module& m) {
  m.def("sgd_step_cpu", &sgd_step_cpu,
        "Fused SGD(-momentum) update of many CPU tensors in one pass (see csrc/kernels/sgd.h). Tensors it cannot "
        "take (device, dtype, layout) are left alone; returns their positions.",
        py::arg("params"), py::arg("grads"), py::arg("bufs"), py::arg("init_buf"), py::arg("lr"), py::arg("momentum"),
        py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"),
        py::arg("lr_in_momentum"), py::arg("momentum_scale"), py::arg("fma"), py::arg("threads"));
  m.def("advise_huge_pages",
        [](const at::Tensor& t) {
          return t.device().is_cpu() && t.numel() > 0 && advise_huge_pages(t.data_ptr(), t.nbytes());
        },
        "madvise(MADV_HUGEPAGE) on the whole 2 MB pages of a CPU tensor's memory; best done before it is first "
        "written. Returns whether any range was advised.",
        py::arg("tensor"));
}

RegisterBindings reg(&bind);

}  // namespace
}  // namespace far
