#include "engine/buffer_registry.h"

#include <cstring>

#include "common/errors.h"

namespace far {
namespace {

void free_registration(void* ctx) { delete static_cast<ShmRegistry::Registration*>(ctx); }

c10::DataPtr data_ptr_of(std::unique_ptr<ShmRegistry::Registration> r) {
  void* data = r->seg->data();
  return c10::DataPtr(data, r.release(), &free_registration, c10::Device(c10::kCPU));
}

}  // namespace

BufferRegistry::BufferRegistry(ShmGroup* group, const std::string& tag)
    : registry_(group ? std::make_shared<ShmRegistry>(group, tag) : nullptr) {}

at::Tensor BufferRegistry::empty(at::IntArrayRef sizes, at::ScalarType dtype) {
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

bool BufferRegistry::register_storage(const at::Tensor& t) {
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

bool BufferRegistry::is_registered(const at::Tensor& t) const {
  return registry_ && t.defined() && t.device().is_cpu() && t.has_storage() && t.numel() > 0 &&
         find(t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size()).has_value();
}

std::optional<std::pair<uint32_t, uint64_t>> BufferRegistry::find(const void* p, size_t bytes) const {
  if (!registry_) return std::nullopt;
  return registry_->find(p, bytes);
}

void BufferRegistry::unlink_all() {
  if (registry_) registry_->unlink_all();
}

void BufferRegistry::detach() {
  if (registry_) registry_->detach();
}

}  // namespace far
