// Registered buffers: memory of this rank that the shared-memory collectives read in place on
// every local rank (zero-copy). Each registration is a segment of its own, listed in this rank's
// control block, where a peer finds its name the first time a collective's header names it.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "transport/shm.h"

namespace far {

class ShmRegistry : public std::enable_shared_from_this<ShmRegistry> {
 public:
  ShmRegistry(ShmGroup* group, std::string tag) : group_(group), tag_(std::move(tag)) {}

  // One registered buffer. Destroying it unlists it (while the group exists) and unmaps it;
  // peers drop their mappings when they next look a registration up.
  struct Registration {
    std::shared_ptr<ShmRegistry> owner;
    std::unique_ptr<OwnSegment> seg;
    uint32_t serial = 0;
    int entry = -1;
    ~Registration();
  };

  // A new registration of at least `bytes` (any thread); nullptr when the table is full or the
  // group is gone.
  std::unique_ptr<Registration> create(size_t bytes);
  // The registration that holds [p, p + bytes): its serial and p's offset in it.
  std::optional<std::pair<uint32_t, uint64_t>> find(const void* p, size_t bytes) const;
  // The communicator is failing or going away: no peer will map my registrations any more, so
  // their names leave /dev/shm now (the memory stays valid for the tensors that use it).
  void unlink_all();
  // The group is going away: registrations stay valid memory but are no longer listed.
  void detach();
  size_t count() const;

 private:
  void release(const Registration& r);
  void unlink_locked();  // mu_ held
  struct Entry {
    size_t bytes;
    uint32_t serial;
    OwnSegment* seg;
  };
  mutable std::mutex mu_;
  ShmGroup* group_;
  std::string tag_;
  uint32_t next_serial_ = 0;
  const int pid_ = getpid();
  std::map<uintptr_t, Entry> by_addr_;  // start address -> registration
};

}  // namespace far
