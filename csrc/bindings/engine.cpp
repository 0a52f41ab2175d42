// Python bindings of the engine: a thin adapter. Arguments become a Collective and go through
// the engine's front door (which validates them); the GIL is released while a call runs.
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include "backend/without_gil.h"
#include "bindings/arguments.h"
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

// A future that completes with `result` (a Python object, made here with the GIL held) when `fut`
// does, or with its error: DDP reads a Python hook's result as a Python object, and this way the
// engine's worker thread completes it from C++ alone, never taking the GIL.
c10::intrusive_ptr<c10::ivalue::Future> completes_with(const c10::intrusive_ptr<c10::ivalue::Future>& fut,
                                                       py::object result) {
  auto out = c10::make_intrusive<c10::ivalue::Future>(c10::PyObjectType::get());
  c10::IValue value = torch::jit::toIValue(result, c10::PyObjectType::get());
  fut->addCallback([out, value](c10::ivalue::Future& f) mutable {
    if (f.hasError())
      out->setError(f.exception_ptr());
    else  // CPU tensors: no storages to record events for (and none extracted, which takes the GIL)
      out->markCompleted(std::move(value), std::vector<c10::ivalue::Future::WeakStorage>{});
  });
  return out;
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

  // The engine's vocabulary as Python enums, named as the engine names them.
  py::enum_<RedOp> op_enum(m, "Op", "Reduce ops (torch.distributed.ReduceOp and these names are accepted too).");
  for (int i = 0; i < kNumOps; ++i) op_enum.value(op_name(static_cast<RedOp>(i)), static_cast<RedOp>(i));
  py::enum_<Algo> algo_enum(m, "Algo", "Algorithms a call or a Communicator can ask for.");
  for (int i = 0; i < kNumUserAlgos; ++i) algo_enum.value(algo_name(static_cast<Algo>(i)), static_cast<Algo>(i));
  py::enum_<Kind> kind_enum(m, "Kind", "The collectives the engine runs.");
  for (int i = 0; i < kNumEngineKinds; ++i) kind_enum.value(kind_name(static_cast<Kind>(i)), static_cast<Kind>(i));

  py::class_<Communicator, std::shared_ptr<Communicator>>(m, "Communicator")
      .def(py::init([](c10::intrusive_ptr<c10d::Store> store, int rank, int size, py::function make_backend,
                       py::object timeout, py::object chunk_bytes, py::object algorithm,
                       c10::optional<std::string> host_id, std::string name, c10::optional<py::function> make_nccl) {
             CommOptions o;
             o.make_backend = backend_factory(std::move(make_backend));
             if (make_nccl) o.make_nccl = backend_factory(std::move(*make_nccl));
             if (host_id) o.host_id = *host_id;
             o.name = std::move(name);
             // This rank's argument error is published like an invalid variable, so that every
             // rank's constructor raises; this rank raises it as the type it is.
             std::optional<ArgError> mine;
             Algo algo = Algo::kAuto;
             try {
               o.config.timeout_ms = timeout_argument(timeout);
               o.config.chunk_bytes = chunk_bytes_argument(chunk_bytes);
               algo = algo_argument(algorithm);
             } catch (const ArgError& e) {
               mine = e;
               o.config = ConfigOverrides{};
               o.config.local_error = e.what();
             }
             Communicator* c = nullptr;
             try {
               py::gil_scoped_release nogil;
               c = new Communicator(std::move(store), rank, size, std::move(o));
             } catch (const ArgError&) {
               if (mine) throw *mine;
               throw;
             }
             // The last reference may drop with the GIL held (a Python object's dealloc): the
             // delete joins threads that may need the GIL (backend/without_gil.h).
             std::shared_ptr<Communicator> comm(c, [](Communicator* p) { without_gil([p] { Communicator::dispose(p); }); });
             if (algo != Algo::kAuto && !comm->supports(algo)) {
               // The topology is the same on every rank: every rank raises here.
               { py::gil_scoped_release nogil; comm->close(); }
               throw value_error(std::string("fastallreduce: algorithm='") + algo_name(algo) +
                                 "' cannot run on this topology (" + std::to_string(comm->topology().num_hosts) +
                                 " hosts); 'shm' needs every rank on one host");
             }
             return comm;
           }),
           py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("make_backend"), py::arg("timeout") = py::none(),
           py::arg("chunk_bytes") = py::none(), py::arg("algorithm") = "auto", py::arg("host_id") = py::none(),
           py::arg("name") = "fastallreduce", py::arg("make_nccl") = py::none())
      .def(
          "run",
          [](Communicator& c, Kind kind, const at::Tensor& input, const c10::optional<at::Tensor>& output,
             const py::object& op, const py::object& root, const py::object& algo, bool async_op,
             bool account) -> py::object {
            Collective col;
            col.kind = kind;
            col.account = account;
            try {
              col.op = op_argument(op);
              col.root = root_argument(root);
              col.algo = algo_argument(algo);
            } catch (const ArgError& e) {
              c.check_usable();
              c.reject(e);  // the peers making this call raise too
            }
            col.input = input;
            if (output) col.output = *output;
            if (async_op) {
              auto fut = c.run_async(col);
              if (!col.input.device().is_cpu())  // NCCL's CUDA-aware future, as it is
                return py::cast(std::make_shared<torch::jit::PythonFutureWrapper>(fut));
              return py::cast(std::make_shared<torch::jit::PythonFutureWrapper>(
                  completes_with(fut, py::cast(output ? *output : input))));
            }
            at::Tensor result;
            {
              py::gil_scoped_release nogil;
              result = c.run(col);
            }
            return py::cast(result);
          },
          py::arg("kind"), py::arg("input"), py::arg("output"), py::arg("op"), py::arg("root"), py::arg("algo"),
          py::arg("async_op"), py::arg("account") = false)
      .def(
          "reject",
          [](Communicator& c, bool is_type_error, const std::string& message) {
            c.check_usable();
            c.reject(is_type_error ? type_error(message) : value_error(message));
          },
          py::arg("is_type_error"), py::arg("message"),
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
      .def("supports", &Communicator::supports, py::arg("algorithm"))
      .def(
          "accounted",
          [](const Communicator& c) {
            const auto t = c.accounted();
            return py::make_tuple(t.ops, t.bytes, t.busy_ns, t.bytes_copied_in, t.last_done_ns);
          },
          "Totals over the calls run with account=True: (ops, bytes, busy_ns, bytes_copied_in, last_done_ns); "
          "times on time.monotonic_ns's clock.")
      .def("choose", [](const Communicator& c, size_t bytes) { return std::string(algo_name(c.choose(bytes))); },
           py::arg("nbytes"))
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
      .def("abort", &Communicator::abort, py::arg("reason"), py::call_guard<py::gil_scoped_release>());

  m.def("_shm_check_segment", &verify_peer_segment, py::arg("name"), py::arg("bytes"), py::call_guard<py::gil_scoped_release>(),
        "Checks a shared-memory segment as a peer's would be before mapping (tests).");
  m.def("host_identity", &host_identity, "This process's host identity (what decides which ranks share memory).");

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
}

RegisterBindings reg(&bind);

}  // namespace
}  // namespace far
