// Python bindings of the torch.distributed backend object (fastallreduce/backend.py registers it).
#include <torch/extension.h>

#include "backend/backend.h"
#include "bindings/arguments.h"
#include "bindings/factory.h"
#include "bindings/registry.h"
#include "common/errors.h"

namespace py = pybind11;

namespace far {
namespace {

void bind(py::module& m) {
  py::class_<FastAllreduceBackend, c10d::Backend, c10::intrusive_ptr<FastAllreduceBackend>>(m, "FastAllreduceBackend")
      .def(py::init([](const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, int64_t timeout_ms,
                       const py::object& algorithm, py::function make_backend, std::string local_error,
                       c10::optional<py::function> make_nccl) {
             // An invalid algorithm is published like any invalid configuration: every rank raises.
             Algo algo = Algo::kAuto;
             try {
               algo = algo_argument(algorithm);
             } catch (const ArgError& e) {
               if (local_error.empty()) local_error = e.what();
             }
             BackendFactory f = backend_factory(std::move(make_backend));
             BackendFactory nccl = make_nccl ? backend_factory(std::move(*make_nccl)) : BackendFactory();
             py::gil_scoped_release nogil;
             return c10::make_intrusive<FastAllreduceBackend>(store, rank, size, std::chrono::milliseconds(timeout_ms),
                                                              algo, f, local_error,
                                                              std::move(nccl));
           }),
           py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("timeout_ms"), py::arg("algorithm"),
           py::arg("make_backend"), py::arg("local_error") = "", py::arg("make_nccl") = py::none())
      .def_property_readonly("engine_ops", &FastAllreduceBackend::engine_ops,
                             "Collectives this backend ran on the fastallreduce engine.")
      .def_property_readonly("delegated_ops", &FastAllreduceBackend::delegated_ops,
                             "Collectives this backend handed to its internal Gloo backend.")
      .def_property_readonly("delegate", &FastAllreduceBackend::delegate, "The internal Gloo backend.")
      .def_property_readonly("nccl_made", [](const FastAllreduceBackend& b) { return b.engine()->nccl_made(); },
                             "Whether the NCCL group of CUDA tensors exists yet (made at the first CUDA call).")
      .def_property_readonly("engine", [](const FastAllreduceBackend& b) { return b.engine(); }, "The engine (a _C.Communicator).");
}

RegisterBindings reg(&bind);

}  // namespace
}  // namespace far
