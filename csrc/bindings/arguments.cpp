#include "bindings/arguments.h"

#include <torch/csrc/distributed/c10d/Types.hpp>

#include <string>

#include "backend/c10d_adapt.h"
#include "common/errors.h"

namespace py = pybind11;

namespace far {
namespace {

std::string names(int n, const char* (*name)(int)) {
  std::string s = "(";
  for (int i = 0; i < n; ++i) s += std::string(i ? ", '" : "'") + name(i) + "'";
  return s + ")";
}

const char* op_at(int i) { return op_name(static_cast<RedOp>(i)); }
const char* algo_at(int i) { return algo_name(static_cast<Algo>(i)); }

std::string shown(const py::handle& h) { return py::repr(h).cast<std::string>(); }
std::string type_name(const py::handle& h) { return py::str(h.get_type().attr("__name__")).cast<std::string>(); }

bool is_int(const py::handle& h) { return py::isinstance<py::int_>(h) && !py::isinstance<py::bool_>(h); }

}  // namespace

RedOp op_argument(const py::handle& op) {
  if (py::isinstance<py::str>(op)) {
    const std::string s = op.cast<std::string>();
    for (int i = 0; i < kNumOps; ++i)
      if (s == op_at(i)) return static_cast<RedOp>(i);
  } else if (py::isinstance<RedOp>(op)) {
    return op.cast<RedOp>();
  } else {
    std::optional<RedOp> r;
    try {  // torch's ReduceOp.SUM etc. are RedOpType values; ReduceOp instances convert to theirs
      r = to_redop(c10d::ReduceOp(op.cast<c10d::ReduceOp::RedOpType>()));
    } catch (const py::cast_error&) {
      try {
        r = to_redop(op.cast<c10d::ReduceOp>());
      } catch (const py::cast_error&) {
      }
    }
    if (r) return *r;
  }
  throw value_error("fastallreduce: unsupported reduce op " + shown(op) + "; use one of " + names(kNumOps, op_at) +
                    " or the matching torch.distributed.ReduceOp");
}

Algo algo_argument(const py::handle& algo) {
  if (py::isinstance<Algo>(algo)) return algo.cast<Algo>();
  if (py::isinstance<py::str>(algo)) {
    const std::string s = algo.cast<std::string>();
    for (int i = 0; i < kNumUserAlgos; ++i)
      if (s == algo_at(i)) return static_cast<Algo>(i);
  }
  throw value_error("fastallreduce: unknown algorithm " + shown(algo) + "; choose from " +
                    names(kNumUserAlgos, algo_at));
}

int root_argument(const py::handle& root) {
  if (!is_int(root))
    throw type_error(std::string("fastallreduce: src must be an int, got ") + type_name(root));
  return root.cast<int>();
}

std::optional<int64_t> timeout_argument(const py::handle& timeout) {
  if (timeout.is_none()) return std::nullopt;
  const py::object timedelta = py::module_::import("datetime").attr("timedelta");
  if (!py::isinstance(timeout, timedelta))
    throw type_error(std::string("fastallreduce: timeout must be a datetime.timedelta, got ") +
                     type_name(timeout));
  // Whole milliseconds, as timedelta / timedelta(milliseconds=1) truncated.
  const py::object ms = timeout.attr("__floordiv__")(timedelta(py::arg("milliseconds") = 1));
  return ms.cast<int64_t>();
}

std::optional<int64_t> chunk_bytes_argument(const py::handle& chunk_bytes) {
  if (chunk_bytes.is_none()) return std::nullopt;
  if (!is_int(chunk_bytes)) throw type_error("fastallreduce: chunk_bytes must be an int, got " + shown(chunk_bytes));
  return chunk_bytes.cast<int64_t>();
}

}  // namespace far
