// Python bindings of the torch.distributed backend object (fastallreduce/backend.py registers it).
#include <torch/extension.h>

#include "backend/backend.h"
#include "bindings/factory.h"
#include "bindings/registry.h"

namespace py = pybind11;

namespace far {
namespace {

void bind(py::module& m) {
  py::class_<FastAllreduceBackend, c10d::Backend, c10::intrusive_ptr<FastAllreduceBackend>>(m, "FastAllreduceBackend")
      .def(py::init([](const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, int64_t timeout_ms, int algo,
                       py::function make_backend, std::string local_error) {
             if (algo < 0 || algo >= kNumUserAlgos)
               throw py::value_error("fastallreduce: unknown algorithm code " + std::to_string(algo));
             BackendFactory f = backend_factory(std::move(make_backend));
             py::gil_scoped_release nogil;
             return c10::make_intrusive<FastAllreduceBackend>(store, rank, size, std::chrono::milliseconds(timeout_ms),
                                                              static_cast<Algo>(algo), f, local_error);
           }),
           py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("timeout_ms"), py::arg("algorithm"),
           py::arg("make_backend"), py::arg("local_error") = "")
      .def_property_readonly("engine_ops", &FastAllreduceBackend::engine_ops,
                             "Collectives this backend ran on the fastallreduce engine.")
      .def_property_readonly("delegated_ops", &FastAllreduceBackend::delegated_ops,
                             "Collectives this backend handed to its internal Gloo backend.")
      .def_property_readonly("delegate", &FastAllreduceBackend::delegate, "The internal Gloo backend.")
      .def_property_readonly("engine", [](const FastAllreduceBackend& b) { return b.engine(); }, "The engine (a _C.Communicator).");
}

RegisterBindings reg(&bind);

}  // namespace
}  // namespace far
