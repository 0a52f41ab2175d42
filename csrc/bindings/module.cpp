#include <torch/extension.h>

#include "bindings/registry.h"

namespace far {
std::vector<BindFn>& binders() {
  static std::vector<BindFn> fns;
  return fns;
}
}  // namespace far

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastallreduce C++/CUDA core";
#ifdef FASTALLREDUCE_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  for (auto fn : far::binders()) fn(m);
}
