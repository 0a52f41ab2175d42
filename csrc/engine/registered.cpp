// Registered buffers: tensors in memory the shared-memory collectives read in place on every
// local rank (transport/shm_registry.h), made new or moved there, and the statistics that show
// whether a call copied.
#include <ATen/ATen.h>

#include <cstring>

#include "engine/communicator.h"

namespace far {
namespace {

void free_registration(void* ctx) { delete static_cast<ShmRegistry::Registration*>(ctx); }

c10::DataPtr data_ptr_of(std::unique_ptr<ShmRegistry::Registration> r) {
  void* data = r->seg->data();
  return c10::DataPtr(data, r.release(), &free_registration, c10::Device(c10::kCPU));
}

}  // namespace

at::Tensor Communicator::empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  check_usable();
  const auto opts = at::TensorOptions().dtype(dtype).device(at::kCPU);
  int64_t numel = 1;
  for (int64_t s : sizes) {
    if (s < 0) throw value_error("fastallreduce: negative size " + std::to_string(s) + " in empty()");
    numel *= s;
  }
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  auto r = registry_ && nbytes > 0 ? registry_->create(nbytes) : nullptr;
  if (!r) return at::empty(sizes, opts);
  const size_t len = r->seg->bytes();
  c10::Storage storage(c10::Storage::use_byte_size_t(), len, data_ptr_of(std::move(r)), nullptr, /*resizable=*/false);
  return at::empty({0}, opts).set_(storage, 0, sizes);
}

bool Communicator::register_storage(const at::Tensor& t) {
  check_usable();
  if (!registry_ || !t.defined() || !t.device().is_cpu() || t.layout() != at::kStrided || !t.has_storage())
    return false;
  c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
  const size_t nbytes = impl->nbytes();
  if (nbytes == 0 || !impl->data() || registry_->find(impl->data(), nbytes)) return false;
  auto r = registry_->create(nbytes);
  if (!r) return false;
  std::memcpy(r->seg->data(), impl->data(), nbytes);
  // Every tensor and view on this storage now reads and writes the registration.
  impl->set_data_ptr_noswap(data_ptr_of(std::move(r)));
  return true;
}

bool Communicator::is_registered(const at::Tensor& t) const {
  return registry_ && t.defined() && t.device().is_cpu() && t.has_storage() && t.numel() > 0 &&
         registry_->find(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size()).has_value();
}

Communicator::Stats Communicator::stats() const {
  return Stats{shm_stats_.bytes_copied_in.load(), shm_stats_.copying_calls.load(), shm_stats_.zero_copy_calls.load(),
               registry_ ? registry_->count() : 0};
}

void Communicator::mark_registered(Call& c) const {
  // In place on the caller's own tensor, on a path that runs in shared memory.
  if (!registry_ || c.kind != Kind::kAllreduce || !on_shm(c.algo) || c.copy_back.defined() ||
      !c.out.is_same(c.in) || c.in.numel() == 0)
    return;
  const auto found = registry_->find(c.in.data_ptr(), static_cast<size_t>(c.in.numel()) * c.in.element_size());
  if (!found) return;
  c.header.reg = found->first;
  c.header.reg_offset = found->second;
}

}  // namespace far
