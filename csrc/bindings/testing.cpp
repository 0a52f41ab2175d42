// fastallreduce._C._testing: the engine's parts alone, for tests (tests/test_engine_parts.py).
// Not a public API: each function builds the part it tests from plain arguments, without a
// store, transports or peers.
#include <torch/extension.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "bindings/registry.h"
#include "common/errors.h"
#include "engine/fault.h"
#include "engine/op_queue.h"
#include "engine/planner.h"

namespace py = pybind11;

namespace far {
namespace {

FaultKind fault_kind(const std::string& name) {
  for (int i = 0; i < kNumFaultKinds; ++i)
    if (name == fault_kind_name(static_cast<FaultKind>(i))) return static_cast<FaultKind>(i);
  throw py::value_error("unknown fault kind " + name);
}

py::dict fault_dict(const Fault& f) {
  py::dict d;
  d["kind"] = fault_kind_name(f.kind);
  d["rank"] = f.rank;
  d["seq"] = f.seq == Fault::kNoSeq ? py::object(py::none()) : py::object(py::int_(f.seq));
  d["message"] = py::bytes(f.message);
  return d;
}

// The topology `rank` sees when group rank r lives on host host_of_rank[r] (hosts numbered
// 0, 1, ... by their lowest rank, as discover_topology numbers them).
Topology topology_of(const std::vector<int>& host_of_rank, int rank) {
  Topology t;
  t.host_of_rank = host_of_rank;
  t.host = host_of_rank.at(rank);
  t.num_hosts = *std::max_element(host_of_rank.begin(), host_of_rank.end()) + 1;
  std::vector<int> per_host(t.num_hosts, 0);
  for (size_t r = 0; r < host_of_rank.size(); ++r) {
    ++per_host[host_of_rank[r]];
    if (host_of_rank[r] == t.host) {
      if (static_cast<int>(r) == rank) t.local_rank = static_cast<int>(t.local.group_ranks.size());
      t.local.group_ranks.push_back(static_cast<int>(r));
      t.local.pids.push_back(0);
    }
  }
  t.uniform = std::set<int>(per_host.begin(), per_host.end()).size() == 1;
  return t;
}

// A planner for `rank` on that topology, with the default cost model and the slot its shared
// memory would have (ShmGroup rounds it to pages).
Planner planner_of(const std::vector<int>& host_of_rank, int rank, bool cuda_ok) {
  const Topology t = topology_of(host_of_rank, rank);
  const CommConfig cfg{};
  const size_t slot = ((t.num_hosts > 1 ? cfg.hier_slot_bytes : cfg.shm_slot_bytes) + 4095) & ~size_t(4095);
  return Planner(rank, static_cast<int>(host_of_rank.size()), cfg, t, Planner::wants_shm(t) ? slot : 0, cuda_ok,
                 nullptr);
}

std::optional<RedOp> op_of(int op) {
  if (op < 0 || op >= kNumOps) return std::nullopt;
  return static_cast<RedOp>(op);
}

// One step of a queue script: a call, synchronous or not, that fails or sleeps when it runs.
struct Step {
  bool sync;
  bool fail;
  int sleep_ms;
};

// What queue_run saw: per call in the order they ran, its seq and thread; per call in script
// order, its error ("" when none); whether a call after close() was refused.
struct QueueRun {
  std::vector<std::pair<uint64_t, std::string>> ran;
  std::vector<std::string> results;
  bool refused_after_close = false;
};

QueueRun run_queue(const std::vector<Step>& steps) {
  QueueRun out;
  out.results.resize(steps.size());
  std::mutex mu;
  const std::thread::id caller = std::this_thread::get_id();
  OpQueue q(
      [&](OpQueue::Task& t) -> std::exception_ptr {
        const Step& s = steps.at(t.seq);
        std::this_thread::sleep_for(std::chrono::milliseconds(s.sleep_ms));
        {
          std::lock_guard<std::mutex> lk(mu);
          out.ran.emplace_back(t.seq, std::this_thread::get_id() == caller ? "caller" : "worker");
        }
        if (s.fail) return std::make_exception_ptr(CommError("call " + std::to_string(t.seq) + " failed"));
        return nullptr;
      },
      /*worker_idle=*/false);
  bool closed = false;  // read under the queue's lock, written by this thread only
  auto check = [&] {
    if (closed) throw ClosedError("closed");
  };
  std::vector<OpQueue::FuturePtr> futs(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    Call call;
    call.out = at::zeros({1});
    try {
      futs[i] = q.submit(std::move(call), steps[i].sync, check);
    } catch (const std::exception& e) {
      out.results[i] = e.what();
    }
  }
  q.close();
  closed = true;
  try {
    q.submit(Call{}, true, check);
  } catch (const ClosedError&) {
    out.refused_after_close = true;
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    if (!futs[i]) continue;
    // close() runs every queued call first: each future is complete by now.
    if (!futs[i]->completed())
      out.results[i] = "not completed";
    else if (futs[i]->hasError())
      out.results[i] = futs[i]->tryRetrieveErrorMessage();
  }
  return out;
}

void bind(py::module& parent) {
  py::module m = parent.def_submodule("_testing", "The engine's parts alone (tests only).");

  m.def("fault_kinds", [] {
    std::vector<std::string> names;
    for (int i = 0; i < kNumFaultKinds; ++i) names.push_back(fault_kind_name(static_cast<FaultKind>(i)));
    return names;
  });
  m.def(
      "fault_encode",
      [](const std::string& kind, int rank, c10::optional<uint64_t> seq, const std::string& message) {
        return py::bytes(Fault{fault_kind(kind), rank, seq.value_or(Fault::kNoSeq), message}.encode());
      },
      py::arg("kind"), py::arg("rank"), py::arg("seq"), py::arg("message"));
  m.def("fault_decode", [](const std::string& record) { return fault_dict(Fault::decode(record)); },
        py::arg("record"));
  m.def(
      "fault_raise", [](const std::string& record, const std::string& suffix) { Fault::decode(record).raise(suffix); },
      py::arg("record"), py::arg("suffix") = "", "Raises the exception a fault record is on every rank.");

  m.def(
      "plan",
      [](const std::vector<int>& host_of_rank, int rank, int kind, const at::Tensor& input,
         const c10::optional<at::Tensor>& output, int op, int root, int algo, bool cuda_ok) {
        Collective c;
        c.kind = static_cast<Kind>(kind);
        c.op = static_cast<RedOp>(op);
        c.root = root;
        c.algo = static_cast<Algo>(algo);
        c.input = input;
        if (output) c.output = *output;
        const Call call = planner_of(host_of_rank, rank, cuda_ok).prepare(c);
        py::dict d;
        d["algo"] = algo_name(call.algo);
        d["inner_algo"] = algo_name(call.inner_algo);
        d["count"] = call.header.count;
        d["staged"] = call.copy_back.defined();
        return d;
      },
      py::arg("host_of_rank"), py::arg("rank"), py::arg("kind"), py::arg("input"), py::arg("output") = py::none(),
      py::arg("op") = 0, py::arg("root") = 0, py::arg("algo") = 0, py::arg("cuda_ok") = false);
  m.def(
      "takes",
      [](const std::vector<int>& host_of_rank, int rank, int kind, const at::Tensor& t, int op) {
        return planner_of(host_of_rank, rank, false).takes(static_cast<Kind>(kind), t, op_of(op));
      },
      py::arg("host_of_rank"), py::arg("rank"), py::arg("kind"), py::arg("tensor"), py::arg("op") = 0,
      "Whether the engine runs the call (op outside 0..4: a reduction the kernels have no code for).");
  m.def(
      "choose",
      [](const std::vector<int>& host_of_rank, int rank, size_t bytes) {
        return std::string(algo_name(planner_of(host_of_rank, rank, false).choose(bytes)));
      },
      py::arg("host_of_rank"), py::arg("rank"), py::arg("bytes"));

  m.def(
      "queue_run",
      [](const std::vector<std::tuple<bool, bool, int>>& script) {
        std::vector<Step> steps;
        for (const auto& [sync, fail, sleep_ms] : script) steps.push_back(Step{sync, fail, sleep_ms});
        QueueRun r;
        {
          py::gil_scoped_release nogil;
          r = run_queue(steps);
        }
        py::list order, threads, results;
        for (const auto& [seq, thread] : r.ran) {
          order.append(seq);
          threads.append(thread);
        }
        for (const auto& e : r.results) results.append(e.empty() ? py::object(py::none()) : py::object(py::str(e)));
        py::dict d;
        d["order"] = order;
        d["threads"] = threads;
        d["results"] = results;
        d["refused_after_close"] = r.refused_after_close;
        return d;
      },
      py::arg("script"),
      "Runs (sync, fail, sleep_ms) calls through an OpQueue, then closes it: what ran where, and each result.");
}

RegisterBindings reg(&bind);

}  // namespace
}  // namespace far
