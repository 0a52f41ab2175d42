#include "transport/shm_registry.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/errors.h"

namespace far {

// ---- my table (any thread) ------------------------------------------------------------------

int ShmGroup::list_registration(uint32_t serial, const OwnSegment& seg) {
  std::lock_guard<std::mutex> lk(reg_mu_);
  ShmControl& c = ctrl(me_);
  if (seg.name().size() >= sizeof(ShmRegEntry::name)) return -1;
  for (int i = 0; i < kMaxRegistrations; ++i) {
    ShmRegEntry& e = c.regs[i];
    if (e.serial.load(std::memory_order_relaxed) != 0) continue;
    e.attached.store(0, std::memory_order_relaxed);
    e.bytes = seg.bytes();
    std::memset(e.name, 0, sizeof(e.name));
    std::memcpy(e.name, seg.name().data(), seg.name().size());
    e.serial.store(serial, std::memory_order_release);  // peers read the entry after this
    return i;
  }
  return -1;
}

void ShmGroup::unlist_registration(int entry) {
  std::lock_guard<std::mutex> lk(reg_mu_);
  ctrl(me_).regs[entry].serial.store(0, std::memory_order_release);
}

// ---- peers' registrations (the collective's thread) -----------------------------------------

void ShmGroup::drop_released_mappings() {
  for (auto it = peer_regs_.begin(); it != peer_regs_.end();) {
    const auto& regs = ctrl(it->first.first).regs;
    bool listed = false;
    for (int i = 0; i < kMaxRegistrations && !listed; ++i)
      listed = regs[i].serial.load(std::memory_order_acquire) == it->first.second;
    if (listed) {
      ++it;
    } else {
      munmap(it->second.data, it->second.bytes);
      it = peer_regs_.erase(it);
    }
  }
}

char* ShmGroup::peer_registration(int r, uint32_t serial, size_t bytes) {
  const auto key = std::make_pair(r, serial);
  auto it = peer_regs_.find(key);
  if (it != peer_regs_.end() && it->second.bytes >= bytes) return it->second.data;
  drop_released_mappings();
  for (int i = 0; i < kMaxRegistrations; ++i) {
    ShmRegEntry& e = ctrl(r).regs[i];
    if (e.serial.load(std::memory_order_acquire) != serial) continue;
    const std::string name(e.name, strnlen(e.name, sizeof(e.name)));
    const size_t len = e.bytes;
    if (len < bytes) break;
    char* p = static_cast<char*>(map_peer_segment(name, len, r));
    peer_regs_[key] = PeerMapping{p, len};
    // The last peer to map it removes the name: nothing of it is left in /dev/shm from here.
    if (static_cast<int>(e.attached.fetch_add(1) + 1) >= local_size() - 1) shm_unlink(name.c_str());
    return p;
  }
  throw CommError("fastallreduce: local rank " + std::to_string(r) + " lists no registered buffer #" +
                  std::to_string(serial) + " of " + std::to_string(bytes) + " bytes");
}

// ---- the registry ---------------------------------------------------------------------------

std::unique_ptr<ShmRegistry::Registration> ShmRegistry::create(size_t bytes) {
  const size_t len = std::max<size_t>(4096, (bytes + 4095) & ~size_t(4095));
  std::lock_guard<std::mutex> lk(mu_);
  if (!group_) return nullptr;
  auto r = std::make_unique<Registration>();
  r->seg = std::make_unique<OwnSegment>(tag_, group_->local_rank(), len);
  failpoint("registration_created");
  r->serial = ++next_serial_;
  if (r->serial == 0) r->serial = ++next_serial_;  // 0 marks a free entry
  r->entry = group_->list_registration(r->serial, *r->seg);
  if (r->entry < 0) return nullptr;  // the segment goes with r
  r->owner = shared_from_this();
  by_addr_[reinterpret_cast<uintptr_t>(r->seg->data())] = Entry{len, r->serial, r->seg.get()};
  return r;
}

std::optional<std::pair<uint32_t, uint64_t>> ShmRegistry::find(const void* p, size_t bytes) const {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lk(mu_);
  auto it = by_addr_.upper_bound(a);
  if (it == by_addr_.begin()) return std::nullopt;
  --it;
  const uint64_t off = a - it->first;
  if (off + bytes > it->second.bytes) return std::nullopt;
  return std::make_pair(it->second.serial, off);
}

void ShmRegistry::release(const Registration& r) {
  std::lock_guard<std::mutex> lk(mu_);
  by_addr_.erase(reinterpret_cast<uintptr_t>(r.seg->data()));
  // A forked child's copy of the tensor must not unlist its parent's buffer (the table is shared).
  if (group_ && r.entry >= 0 && getpid() == pid_) group_->unlist_registration(r.entry);
}

void ShmRegistry::unlink_locked() {
  for (auto& kv : by_addr_) kv.second.seg->unlink();
}

void ShmRegistry::unlink_all() {
  std::lock_guard<std::mutex> lk(mu_);
  unlink_locked();
}

void ShmRegistry::detach() {
  std::lock_guard<std::mutex> lk(mu_);
  unlink_locked();
  group_ = nullptr;
}

size_t ShmRegistry::count() const {
  std::lock_guard<std::mutex> lk(mu_);
  return by_addr_.size();
}

ShmRegistry::Registration::~Registration() {
  if (owner) owner->release(*this);
}

}  // namespace far
