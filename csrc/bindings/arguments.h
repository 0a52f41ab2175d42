// Python arguments of the engine's calls, converted and checked once, here: the op (a name or a
// torch.distributed.ReduceOp), the algorithm (a name or _C.Algo), the root, the constructor's
// options. Failures are ArgError (TypeError / ValueError in Python), thrown before anything is sent.
#pragma once
#include <torch/extension.h>

#include <cstdint>
#include <optional>

#include "common/types.h"

namespace far {

// "sum" .. "min", _C.Op, or torch.distributed.ReduceOp (SUM, AVG, PRODUCT, MAX, MIN).
RedOp op_argument(const pybind11::handle& op);
// A requestable algorithm: "auto" .. "hierarchical" or _C.Algo.
Algo algo_argument(const pybind11::handle& algo);
// A broadcast root: an int (bool refused).
int root_argument(const pybind11::handle& root);
// None, or a datetime.timedelta in whole milliseconds.
std::optional<int64_t> timeout_argument(const pybind11::handle& timeout);
// None, or an int (bool refused); its range is the configuration's (FASTALLREDUCE_CHUNK_BYTES).
std::optional<int64_t> chunk_bytes_argument(const pybind11::handle& chunk_bytes);

}  // namespace far
