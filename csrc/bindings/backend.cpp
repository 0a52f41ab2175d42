// Python bindings of the torch.distributed backend object (fastallreduce/backend.py builds it).
#include <torch/extension.h>

#include "backend/backend.h"
#include "bindings/registry.h"

namespace py = pybind11;

namespace far {
namespace {

void bind(py::module& m) {
  py::class_<FastAllreduceBackend, c10d::Backend, c10::intrusive_ptr<FastAllreduceBackend>>(m, "FastAllreduceBackend")
      .def(py::init([](std::shared_ptr<Communicator> engine, c10::intrusive_ptr<c10d::Backend> delegate, int rank,
                       int size, int64_t timeout_ms, int algo) {
             if (algo < 0 || algo > 4) throw py::value_error("fastallreduce: unknown algorithm code " + std::to_string(algo));
             return c10::make_intrusive<FastAllreduceBackend>(std::move(engine), std::move(delegate), rank, size,
                                                              std::chrono::milliseconds(timeout_ms), static_cast<Algo>(algo));
           }),
           py::arg("engine"), py::arg("delegate"), py::arg("rank"), py::arg("size"), py::arg("timeout_ms"),
           py::arg("algorithm"))
      .def_property_readonly("engine_ops", &FastAllreduceBackend::engine_ops,
                             "Collectives this backend ran on the fastallreduce engine.")
      .def_property_readonly("delegated_ops", &FastAllreduceBackend::delegated_ops,
                             "Collectives this backend handed to its internal Gloo backend.")
      .def_property_readonly("delegate", &FastAllreduceBackend::delegate, "The internal Gloo backend.");
}

RegisterBindings reg(&bind);

}  // namespace
}  // namespace far
