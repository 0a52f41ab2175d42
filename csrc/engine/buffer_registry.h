// Registered buffers: tensors in memory the shared-memory collectives read in place on every
// local rank (transport/shm_registry.h), made new or moved there. Without local peers there is
// nothing to register: every tensor is an ordinary one and nothing is found.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "transport/shm.h"
#include "transport/shm_registry.h"

namespace far {

class BufferRegistry {
 public:
  // `group` null: no local peers. Segment names carry `tag`.
  BufferRegistry(ShmGroup* group, const std::string& tag);

  // A tensor in a new registration (an ordinary tensor where none can be made).
  at::Tensor empty(at::IntArrayRef sizes, at::ScalarType dtype);
  // Moves the storage of CPU tensor `t` into a new registration; false, changing nothing, where
  // it cannot.
  bool register_storage(const at::Tensor& t);
  bool is_registered(const at::Tensor& t) const;
  // The registration (id, offset) holding `bytes` at `p`, if any.
  std::optional<std::pair<uint32_t, uint64_t>> find(const void* p, size_t bytes) const;
  size_t count() const { return registry_ ? registry_->count() : 0; }

  // After a fault or an abort: no peer maps these any more.
  void unlink_all();
  // Before the group goes: registered tensors may outlive it.
  void detach();

 private:
  std::shared_ptr<ShmRegistry> registry_;  // outlives this in the tensors it registered
};

}  // namespace far
