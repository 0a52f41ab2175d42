// Everything that differs between the torch releases we support (2.11 to the newest), gated on
// torch's own version macros, in this one place. Nothing else in csrc/ tests a torch version.
#pragma once
#include <c10/util/env.h>
#include <torch/csrc/api/include/torch/version.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#define FAR_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// 2.14 renamed the tensor-in/tensor-out collectives (all_gather_single for _allgather_base,
// reduce_scatter_single for _reduce_scatter_base, all_to_all_single for alltoall_base, the
// *_single_coalesced pair) and added gather_single; the old names stay as forwarding virtuals.
#define FAR_TORCH_SINGLE_NAMES FAR_TORCH_AT_LEAST(2, 14)
// 2.15 added c10::utils::unset_env (torch's environment lock around unsetenv).
#define FAR_TORCH_UNSET_ENV FAR_TORCH_AT_LEAST(2, 15)

namespace far::torch_compat {

// The tensor-in/tensor-out collectives of a c10d backend under the names this torch has.
inline c10::intrusive_ptr<c10d::Work> all_gather_single(c10d::Backend& b, at::Tensor& out, at::Tensor& in,
                                                        const c10d::AllgatherOptions& o) {
#if FAR_TORCH_SINGLE_NAMES
  return b.all_gather_single(out, in, o);
#else
  return b._allgather_base(out, in, o);
#endif
}
inline c10::intrusive_ptr<c10d::Work> all_gather_single_coalesced(c10d::Backend& b, std::vector<at::Tensor>& outs,
                                                                  std::vector<at::Tensor>& ins,
                                                                  const c10d::AllgatherOptions& o) {
#if FAR_TORCH_SINGLE_NAMES
  return b.all_gather_single_coalesced(outs, ins, o);
#else
  return b.allgather_into_tensor_coalesced(outs, ins, o);
#endif
}
inline c10::intrusive_ptr<c10d::Work> reduce_scatter_single(c10d::Backend& b, at::Tensor& out, at::Tensor& in,
                                                            const c10d::ReduceScatterOptions& o) {
#if FAR_TORCH_SINGLE_NAMES
  return b.reduce_scatter_single(out, in, o);
#else
  return b._reduce_scatter_base(out, in, o);
#endif
}
inline c10::intrusive_ptr<c10d::Work> reduce_scatter_single_coalesced(c10d::Backend& b, std::vector<at::Tensor>& outs,
                                                                      std::vector<at::Tensor>& ins,
                                                                      const c10d::ReduceScatterOptions& o) {
#if FAR_TORCH_SINGLE_NAMES
  return b.reduce_scatter_single_coalesced(outs, ins, o);
#else
  return b.reduce_scatter_tensor_coalesced(outs, ins, o);
#endif
}
inline c10::intrusive_ptr<c10d::Work> all_to_all_single(c10d::Backend& b, at::Tensor& out, at::Tensor& in,
                                                        std::vector<int64_t>& out_splits,
                                                        std::vector<int64_t>& in_splits,
                                                        const c10d::AllToAllOptions& o) {
#if FAR_TORCH_SINGLE_NAMES
  return b.all_to_all_single(out, in, out_splits, in_splits, o);
#else
  return b.alltoall_base(out, in, out_splits, in_splits, o);
#endif
}

// Sets (value) or unsets (nullopt) a variable through torch's own environment accessors, which
// hold torch's environment lock, so that torch's threads reading their settings never race the
// write. Before 2.15 torch has no locked unset: there the variable is unset by libc alone.
inline void set_env(const char* name, const std::optional<std::string>& value) {
  if (value) {
    c10::utils::set_env(name, value->c_str(), /*overwrite=*/true);
    return;
  }
#if FAR_TORCH_UNSET_ENV
  c10::utils::unset_env(name);
#else
  ::unsetenv(name);
#endif
}
inline std::optional<std::string> get_env(const char* name) { return c10::utils::get_env(name); }

}  // namespace far::torch_compat
