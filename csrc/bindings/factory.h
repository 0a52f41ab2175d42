// A Python callable (store, rank, size, timeout_ms) -> a torch Backend (ProcessGroupGloo or
// ProcessGroupNCCL) as the engine's BackendFactory. It is called with the GIL taken, and
// released with the GIL.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/extension.h>

#include <memory>

#include "transport/gloo.h"

namespace far {

inline BackendFactory backend_factory(pybind11::function f) {
  std::shared_ptr<pybind11::function> fn(new pybind11::function(std::move(f)), [](pybind11::function* p) {
    pybind11::gil_scoped_acquire gil;
    delete p;
  });
  return [fn](const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, std::chrono::milliseconds timeout) {
    pybind11::gil_scoped_acquire gil;
    pybind11::object pg = (*fn)(store, rank, size, static_cast<int64_t>(timeout.count()));
    return pg.cast<c10::intrusive_ptr<c10d::Backend>>();
  };
}

}  // namespace far
