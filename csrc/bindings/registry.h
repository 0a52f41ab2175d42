// Each bindings/*.cpp file registers its own part of fastallreduce._C, so that adding a
// module never means editing a shared list.
#pragma once
#include <pybind11/pybind11.h>

#include <functional>
#include <vector>

namespace far {

using BindFn = void (*)(pybind11::module&);
std::vector<BindFn>& binders();

struct RegisterBindings {
  explicit RegisterBindings(BindFn fn) { binders().push_back(fn); }
};

}  // namespace far
