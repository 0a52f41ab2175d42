// Python bindings of the engine: a thin adapter. Arguments become a Collective and go through
// the engine's front door (which validates them); the GIL is released while a call runs.
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include "backend/without_gil.h"
#include "bindings/factory.h"
#include "bindings/registry.h"
#include "common/aten.h"
#include "common/errors.h"
#include "common/knobs.h"
#include "common/torch_compat.h"
#include "engine/communicator.h"
#include "transport/nccl.h"

namespace py = pybind11;

namespace far {
namespace {

template <typename E>
E code(int v, int n, const char* what) {
  if (v < 0 || v >= n) throw py::value_error(std::string("fastallreduce: unknown ") + what + " code " + std::to_string(v));
  return static_cast<E>(v);
}

py::dict config_dict(const CommConfig& c) {
  py::dict d;
  d["timeout_ms"] = c.timeout_ms;
  d[knobs::CHUNK_BYTES.name] = c.algo.chunk_bytes;
  d[knobs::WINDOW.name] = c.algo.window;
  d[knobs::ALPHA_US.name] = c.cost.alpha_us;
  d[knobs::BETA_GBPS.name] = c.cost.beta_gbps;
  d[knobs::SHM_STAGE_US.name] = c.cost.shm_stage_us;
  d[knobs::SHM_GBPS.name] = c.cost.shm_gbps;
  d[knobs::SHM_SLOT_BYTES.name] = c.shm_slot_bytes;
  d[knobs::HIER_SLOT_BYTES.name] = c.hier_slot_bytes;
  d[knobs::SHM_ONESHOT_BYTES.name] = c.shm.oneshot_bytes;
  d[knobs::SHM_CHUNK_BYTES.name] = c.shm.chunk_bytes;
  d[knobs::WORKER_IDLE.name] = c.worker_idle ? 1 : 0;
  d["threads"] = c.algo.threads;
  return d;
}

void bind(py::module& m) {
  auto base = py::register_exception<CommError>(m, "CommError", PyExc_RuntimeError);
  py::register_exception<MismatchError>(m, "MismatchError", base.ptr());
  py::register_exception<CommTimeoutError>(m, "CommTimeoutError", base.ptr());
  py::register_exception<ClosedError>(m, "ClosedError", base.ptr());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ArgError& e) {
      PyObject* cls = e.type == ArgError::kType ? PyExc_TypeError
                      : e.type == ArgError::kValue ? PyExc_ValueError
                                                   : PyExc_NotImplementedError;
      PyErr_SetString(cls, e.what());
    }
  });

  py::class_<Communicator, std::shared_ptr<Communicator>>(m, "Communicator")
      .def(py::init([](c10::intrusive_ptr<c10d::Store> store, int rank, int size, py::function make_backend,
                       c10::optional<int64_t> timeout_ms, c10::optional<int64_t> chunk_bytes,
                       c10::optional<std::string> host_id, std::string name, std::string local_error,
                       c10::optional<py::function> make_nccl) {
             CommOptions o;
             o.make_backend = backend_factory(std::move(make_backend));
             if (make_nccl) o.make_nccl = backend_factory(std::move(*make_nccl));
             if (timeout_ms) o.config.timeout_ms = *timeout_ms;
             if (chunk_bytes) o.config.chunk_bytes = *chunk_bytes;
             if (host_id) o.host_id = *host_id;
             o.config.local_error = std::move(local_error);
             o.name = std::move(name);
             py::gil_scoped_release nogil;
             // The last reference may drop with the GIL held (a Python object's dealloc): the
             // delete joins threads that may need the GIL (backend/without_gil.h).
             auto* c = new Communicator(std::move(store), rank, size, std::move(o));
             return std::shared_ptr<Communicator>(c, [](Communicator* p) { without_gil([p] { Communicator::dispose(p); }); });
           }),
           py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("make_backend"), py::arg("timeout_ms") = py::none(),
           py::arg("chunk_bytes") = py::none(), py::arg("host_id") = py::none(), py::arg("name") = "fastallreduce",
           py::arg("local_error") = "", py::arg("make_nccl") = py::none())
      .def(
          "run",
          [](Communicator& c, int kind, const at::Tensor& input, const c10::optional<at::Tensor>& output, int op,
             int root, int algo, bool async_op) -> py::object {
            Collective col;
            col.kind = code<Kind>(kind, kNumEngineKinds, "collective");
            col.op = code<RedOp>(op, kNumOps, "reduce op");
            col.algo = code<Algo>(algo, kNumUserAlgos, "algorithm");
            col.root = root;
            col.input = input;
            if (output) col.output = *output;
            if (async_op)
              return py::cast(std::make_shared<torch::jit::PythonFutureWrapper>(c.run_async(col)));
            at::Tensor result;
            {
              py::gil_scoped_release nogil;
              result = c.run(col);
            }
            return py::cast(result);
          },
          py::arg("kind"), py::arg("input"), py::arg("output"), py::arg("op"), py::arg("root"), py::arg("algo"),
          py::arg("async_op"))
      .def(
          "reject",
          [](Communicator& c, bool is_type_error, const std::string& message) {
            c.check_usable();
            c.reject(is_type_error ? type_error(message) : value_error(message));
          },
          "Publishes that this rank rejects its next call (peers making it raise), then raises.")
      .def(
          "empty",
          [](Communicator& c, std::vector<int64_t> sizes, at::ScalarType dtype) { return c.empty(sizes, dtype); },
          py::arg("sizes"), py::arg("dtype"), py::call_guard<py::gil_scoped_release>())
      .def("register_storage", &Communicator::register_storage, py::arg("tensor"),
           py::call_guard<py::gil_scoped_release>())
      .def("is_registered", &Communicator::is_registered, py::arg("tensor"))
      .def("stats",
           [](const Communicator& c) {
             const auto s = c.stats();
             py::dict d;
             d["bytes_copied_in"] = s.bytes_copied_in;
             d["copying_calls"] = s.copying_calls;
             d["zero_copy_calls"] = s.zero_copy_calls;
             d["registrations"] = s.registrations;
             return d;
           })
      .def("supports", [](const Communicator& c, int algo) { return c.supports(code<Algo>(algo, kNumUserAlgos, "algorithm")); })
      .def("choose", [](const Communicator& c, size_t bytes) { return std::string(algo_name(c.choose(bytes))); })
      .def_property_readonly("last_algorithm", [](const Communicator& c) { return std::string(algo_name(c.last_algorithm())); })
      .def_property_readonly("ops_completed", &Communicator::ops_completed)
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("num_hosts", [](const Communicator& c) { return c.topology().num_hosts; })
      .def_property_readonly("host_of_rank", [](const Communicator& c) { return c.topology().host_of_rank; })
      .def_property_readonly("local_ranks", [](const Communicator& c) { return c.topology().local.group_ranks; })
      .def_property_readonly("uniform_hosts", [](const Communicator& c) { return c.topology().uniform; })
      .def_property_readonly("single_host", &Communicator::single_host)
      .def_property_readonly("config", [](const Communicator& c) { return config_dict(c.config()); })
      .def_property_readonly("nccl_made", &Communicator::nccl_made)
      // What the first CUDA call does first: makes the NCCL group through the factory (tests).
      .def("_make_nccl_group", [](Communicator& c) { c.nccl(); }, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("aborted", &Communicator::aborted)
      .def_property_readonly("abort_reason", &Communicator::abort_reason)
      .def("check_usable", &Communicator::check_usable)
      .def("close", &Communicator::close, py::call_guard<py::gil_scoped_release>())
      .def("abort", &Communicator::abort, py::call_guard<py::gil_scoped_release>());

  m.def("_shm_check_segment", &verify_peer_segment, py::call_guard<py::gil_scoped_release>(),
        "Checks a shared-memory segment as a peer's would be before mapping (tests).");
  m.def("host_identity", &host_identity, "This process's host identity (what decides which ranks share memory).");

  // Kernels, exposed for tests and micro-benchmarks.
  m.def("reduce_inplace", [](at::Tensor dst, const at::Tensor& src, int op, int threads) {
    TORCH_CHECK(dst.is_contiguous() && src.is_contiguous() && dst.numel() == src.numel() &&
                dst.scalar_type() == src.scalar_type() && dst.device().is_cpu() && src.device().is_cpu() &&
                to_dtype(dst.scalar_type()));
    py::gil_scoped_release nogil;
    reduce_inplace(dst.data_ptr(), src.data_ptr(), dst.numel(), *to_dtype(dst.scalar_type()), static_cast<RedOp>(op),
                   threads);
  }, py::arg("dst"), py::arg("src"), py::arg("op"), py::arg("threads") = 1);
  // torch's own environment accessors (they hold torch's environment lock, so torch's threads
  // reading their settings never race a write) and the NCCL fault classification, for Python.
  m.def("_set_torch_env", [](const std::string& name, c10::optional<std::string> value) {
    torch_compat::set_env(name.c_str(), value ? std::optional<std::string>(*value) : std::nullopt);
  }, py::arg("name"), py::arg("value"));
  m.def("_get_torch_env", [](const std::string& name) -> c10::optional<std::string> {
    auto v = torch_compat::get_env(name.c_str());
    return v ? c10::optional<std::string>(*v) : c10::nullopt;
  }, py::arg("name"));
  m.def("_nccl_fault_record", &nccl_fault_record, py::arg("work_result"), py::arg("rank"), py::arg("what"));
  m.def("reduce_many", [](at::Tensor dst, const std::vector<at::Tensor>& srcs, int op, int divisor, int threads) {
    std::vector<const void*> ptrs;
    for (auto& s : srcs) {
      TORCH_CHECK(s.is_contiguous() && s.numel() == dst.numel() && s.scalar_type() == dst.scalar_type() && s.device().is_cpu());
      ptrs.push_back(s.data_ptr());
    }
    TORCH_CHECK(dst.is_contiguous() && !ptrs.empty() && to_dtype(dst.scalar_type()));
    py::gil_scoped_release nogil;
    reduce_many(dst.data_ptr(), ptrs.data(), static_cast<int>(ptrs.size()), dst.numel(), *to_dtype(dst.scalar_type()),
                static_cast<RedOp>(op), divisor, threads);
  }, py::arg("dst"), py::arg("srcs"), py::arg("op"), py::arg("divisor") = 1, py::arg("threads") = 1);
}

RegisterBindings reg(&bind);

}  // namespace
}  // namespace far
