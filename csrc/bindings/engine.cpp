// Python bindings of the engine: argument validation (before anything is sent), GIL release,
// futures and exception classes.
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include "bindings/registry.h"
#include "engine/communicator.h"
#include "engine/errors.h"

namespace py = pybind11;

namespace far {
namespace {

const char* kOpNames[] = {"sum", "avg", "product", "max", "min"};

// Raises TypeError / ValueError / NotImplementedError naming the problem.
void validate(const at::Tensor& t, const c10::optional<at::Tensor>& out, int op) {
  if (op < 0 || op > 4) throw py::value_error("fastallreduce: unknown reduce op code " + std::to_string(op));
  if (t.is_sparse() || t.layout() != at::kStrided)
    throw py::type_error("fastallreduce: sparse / non-strided tensors are not supported (got layout " +
                         c10::str(t.layout()) + ")");
  if (!t.device().is_cpu())
    throw std::runtime_error("NotImplementedError: fastallreduce: no allreduce path for device " + t.device().str() +
                             " in this build");
  DType dt;
  try {
    dt = to_dtype(t.scalar_type());
  } catch (const std::invalid_argument& e) {
    throw py::type_error(e.what());
  }
  const RedOp rop = static_cast<RedOp>(op);
  if (rop == RedOp::kAvg && !is_floating(dt))
    throw py::type_error(std::string("fastallreduce: op=avg needs a floating dtype, got ") + dtype_name(dt) +
                         " (integer division would silently truncate; use sum)");
  if (dt == DType::kBool && rop != RedOp::kMax && rop != RedOp::kMin)
    throw py::type_error(std::string("fastallreduce: bool tensors support only op=max / op=min, got op=") + kOpNames[op]);
  if (!t.is_contiguous())
    throw py::value_error("fastallreduce: tensor must be contiguous (call .contiguous() first)");
  if (t.is_conj() || t.is_neg())
    throw py::value_error("fastallreduce: tensor has a lazy conj/neg bit; resolve it first");
  if (out) {
    const at::Tensor& o = *out;
    if (o.device() != t.device()) throw py::value_error("fastallreduce: out is on " + o.device().str() + ", tensor on " + t.device().str());
    if (o.scalar_type() != t.scalar_type())
      throw py::type_error(std::string("fastallreduce: out has dtype ") + c10::toString(o.scalar_type()) +
                           ", tensor has " + c10::toString(t.scalar_type()));
    if (o.sizes() != t.sizes()) throw py::value_error("fastallreduce: out has shape " + c10::str(o.sizes()) + ", tensor has " + c10::str(t.sizes()));
    if (!o.is_contiguous()) throw py::value_error("fastallreduce: out must be contiguous");
    if (!o.is_same(t) && o.numel() > 0) {
      const char *a = static_cast<const char*>(t.data_ptr()), *b = static_cast<const char*>(o.data_ptr());
      if (a < b + o.nbytes() && b < a + t.nbytes())
        throw py::value_error("fastallreduce: out overlaps tensor without being the same tensor");
    }
  }
}

Call make_call(const Communicator& comm, const at::Tensor& t, const c10::optional<at::Tensor>& out, int op, int algo) {
  validate(t, out, op);
  if (algo < 0 || algo > 4) throw py::value_error("fastallreduce: unknown algorithm code " + std::to_string(algo));
  if (!comm.supports(static_cast<Algo>(algo)))
    throw py::value_error(std::string("fastallreduce: algorithm=") + algo_name(static_cast<Algo>(algo)) +
                          " cannot run on this topology (shm needs every rank on one host)");
  Call c;
  c.input = t;
  c.output = out ? *out : t;
  c.op = static_cast<RedOp>(op);
  c.algo = static_cast<Algo>(algo);
  return c;
}

// allgather / reduce_scatter / broadcast: validated like allreduce, plus the sizes the group
// implies (allgather: output = size x input; reduce_scatter: input = size x output).
Call make_family_call(const Communicator& comm, int kind, const at::Tensor& in, const at::Tensor& out, int op,
                      int root) {
  if (kind < static_cast<int>(Kind::kAllgather) || kind > static_cast<int>(Kind::kBroadcast))
    throw py::value_error("fastallreduce: unknown collective code " + std::to_string(kind));
  const Kind k = static_cast<Kind>(kind);
  // Gathers and broadcasts copy: any dtype the engine moves, bool included (checked as max).
  const int check_op = k == Kind::kReduceScatter ? op : static_cast<int>(RedOp::kMax);
  validate(in, c10::nullopt, check_op);
  if (k != Kind::kBroadcast) validate(out, c10::nullopt, check_op);  // broadcast is in place
  if (out.scalar_type() != in.scalar_type())
    throw py::type_error(std::string("fastallreduce: output has dtype ") + c10::toString(out.scalar_type()) +
                         ", input has " + c10::toString(in.scalar_type()));
  const int64_t n = comm.size();
  if (k == Kind::kAllgather && out.numel() != n * in.numel())
    throw py::value_error("fastallreduce: allgather output has " + std::to_string(out.numel()) +
                          " elements; it needs group size x input = " + std::to_string(n * in.numel()));
  if (k == Kind::kReduceScatter && in.numel() != n * out.numel())
    throw py::value_error("fastallreduce: reduce_scatter input has " + std::to_string(in.numel()) +
                          " elements; it needs group size x output = " + std::to_string(n * out.numel()));
  if (k == Kind::kBroadcast && (root < 0 || root >= n))
    throw py::value_error("fastallreduce: broadcast src " + std::to_string(root) + " is not a rank of the group (size " +
                          std::to_string(n) + ")");
  if (k != Kind::kBroadcast && in.numel() > 0 && out.numel() > 0) {
    const char *a = static_cast<const char*>(in.data_ptr()), *b = static_cast<const char*>(out.data_ptr());
    if (a < b + out.nbytes() && b < a + in.nbytes())
      throw py::value_error(std::string("fastallreduce: ") + kind_name(k) + " input and output overlap");
  }
  Call c;
  c.input = in;
  c.output = k == Kind::kBroadcast ? in : out;
  c.op = static_cast<RedOp>(op);
  c.algo = Algo::kShm;
  c.kind = k;
  c.root = root;
  return c;
}

void bind(py::module& m) {
  auto base = py::register_exception<CommError>(m, "CommError", PyExc_RuntimeError);
  py::register_exception<MismatchError>(m, "MismatchError", base.ptr());
  py::register_exception<CommTimeoutError>(m, "CommTimeoutError", base.ptr());
  py::register_exception<ClosedError>(m, "ClosedError", base.ptr());

  py::class_<Communicator, std::shared_ptr<Communicator>>(m, "Communicator")
      .def(py::init([](c10::intrusive_ptr<c10d::Backend> pg, c10::intrusive_ptr<c10d::Store> store,
                       int64_t timeout_ms, int64_t chunk_bytes, int window, int threads, double alpha_us,
                       double beta_gbps, std::string name, int local_rank, std::vector<int> local_ranks,
                       std::vector<int> local_pids, int num_hosts, bool uniform,
                       c10::optional<c10::intrusive_ptr<c10d::Backend>> cross, int64_t shm_slot_bytes,
                       int64_t oneshot_bytes, int64_t shm_chunk_bytes, bool worker_idle) {
             CommConfig cfg;
             cfg.timeout_ms = timeout_ms;
             cfg.algo.chunk_bytes = static_cast<size_t>(chunk_bytes);
             cfg.algo.window = window;
             cfg.algo.threads = threads;
             cfg.cost.alpha_us = alpha_us;
             cfg.cost.beta_gbps = beta_gbps;
             cfg.name = std::move(name);
             cfg.shm_slot_bytes = static_cast<size_t>(shm_slot_bytes);
             cfg.shm.oneshot_bytes = static_cast<size_t>(oneshot_bytes);
             cfg.shm.chunk_bytes = static_cast<size_t>(shm_chunk_bytes);
             cfg.worker_idle = worker_idle;
             Topology topo;
             topo.local_rank = local_rank;
             topo.local.group_ranks = std::move(local_ranks);
             topo.local.pids = std::move(local_pids);
             topo.num_hosts = num_hosts;
             topo.uniform = uniform;
             if (cross) topo.cross = *cross;
             py::gil_scoped_release nogil;
             // The last reference may drop on a thread that holds the GIL (a Python object's
             // dealloc). Closing joins the worker thread, which may itself be waiting for the GIL
             // to drop a finished future's tensor: release the GIL around the delete.
             return std::shared_ptr<Communicator>(
                 new Communicator(std::move(pg), std::move(store), std::move(cfg), std::move(topo)),
                 [](Communicator* c) {
                   if (Py_IsInitialized() && PyGILState_Check()) {
                     py::gil_scoped_release release;
                     delete c;
                   } else {
                     delete c;
                   }
                 });
           }),
           py::arg("pg"), py::arg("store"), py::arg("timeout_ms"), py::arg("chunk_bytes"), py::arg("window"),
           py::arg("threads"), py::arg("alpha_us"), py::arg("beta_gbps"), py::arg("name"), py::arg("local_rank"),
           py::arg("local_ranks"), py::arg("local_pids"), py::arg("num_hosts"), py::arg("uniform"), py::arg("cross"),
           py::arg("shm_slot_bytes"), py::arg("oneshot_bytes"), py::arg("shm_chunk_bytes"),
           py::arg("worker_idle") = true)
      .def("supports", [](const Communicator& c, int algo) { return c.supports(static_cast<Algo>(algo)); })
      .def("allreduce",
           [](Communicator& c, const at::Tensor& t, const c10::optional<at::Tensor>& out, int op, int algo) {
             Call call = make_call(c, t, out, op, algo);
             at::Tensor result = call.output;
             {
               py::gil_scoped_release nogil;
               c.run(std::move(call));
             }
             return result;
           })
      .def("allreduce_async",
           [](Communicator& c, const at::Tensor& t, const c10::optional<at::Tensor>& out, int op, int algo) {
             Call call = make_call(c, t, out, op, algo);
             return std::make_shared<torch::jit::PythonFutureWrapper>(c.run_async(std::move(call)));
           })
      .def("supports_gather_family", &Communicator::supports_gather_family)
      // Checks the arguments and raises as `collective` would; sends nothing (the Python
      // fallback across hosts validates with it before it starts).
      .def("check_collective",
           [](Communicator& c, int kind, const at::Tensor& in, const at::Tensor& out, int op, int root) {
             make_family_call(c, kind, in, out, op, root);
           })
      .def("collective",
           [](Communicator& c, int kind, const at::Tensor& in, const at::Tensor& out, int op, int root) {
             Call call = make_family_call(c, kind, in, out, op, root);
             at::Tensor result = call.output;
             {
               py::gil_scoped_release nogil;
               c.run(std::move(call));
             }
             return result;
           })
      .def("collective_async",
           [](Communicator& c, int kind, const at::Tensor& in, const at::Tensor& out, int op, int root) {
             Call call = make_family_call(c, kind, in, out, op, root);
             return std::make_shared<torch::jit::PythonFutureWrapper>(c.run_async(std::move(call)));
           })
      .def("choose", [](const Communicator& c, size_t bytes) { return std::string(algo_name(c.choose(bytes))); })
      .def_property_readonly("last_algorithm", [](const Communicator& c) { return std::string(algo_name(c.last_algorithm())); })
      .def_property_readonly("ops_completed", &Communicator::ops_completed)
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("aborted", &Communicator::aborted)
      .def_property_readonly("abort_reason", &Communicator::abort_reason)
      .def("close", &Communicator::close, py::call_guard<py::gil_scoped_release>())
      .def("abort", &Communicator::abort, py::call_guard<py::gil_scoped_release>());

  // Kernels, exposed for tests and micro-benchmarks.
  m.def("reduce_inplace", [](at::Tensor dst, const at::Tensor& src, int op, int threads) {
    TORCH_CHECK(dst.is_contiguous() && src.is_contiguous() && dst.numel() == src.numel() &&
                dst.scalar_type() == src.scalar_type() && dst.device().is_cpu() && src.device().is_cpu());
    py::gil_scoped_release nogil;
    reduce_inplace(dst.data_ptr(), src.data_ptr(), dst.numel(), to_dtype(dst.scalar_type()), static_cast<RedOp>(op), threads);
  }, py::arg("dst"), py::arg("src"), py::arg("op"), py::arg("threads") = 1);
  m.def("reduce_many", [](at::Tensor dst, const std::vector<at::Tensor>& srcs, int op, int divisor, int threads) {
    std::vector<const void*> ptrs;
    for (auto& s : srcs) {
      TORCH_CHECK(s.is_contiguous() && s.numel() == dst.numel() && s.scalar_type() == dst.scalar_type() && s.device().is_cpu());
      ptrs.push_back(s.data_ptr());
    }
    TORCH_CHECK(dst.is_contiguous() && !ptrs.empty());
    py::gil_scoped_release nogil;
    reduce_many(dst.data_ptr(), ptrs.data(), static_cast<int>(ptrs.size()), dst.numel(), to_dtype(dst.scalar_type()),
                static_cast<RedOp>(op), divisor, threads);
  }, py::arg("dst"), py::arg("srcs"), py::arg("op"), py::arg("divisor") = 1, py::arg("threads") = 1);
}

RegisterBindings reg(&bind);

}  // namespace
}  // namespace far
