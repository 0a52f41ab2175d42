// POSIX shared-memory segments of one host: naming, creation, mapping a peer's, and removing
// those a killed rank left behind. Used by the shared-memory group (one segment per local rank)
// and by registered buffers (one segment per registration).
#pragma once
#include <cstddef>
#include <string>

namespace far {

// A segment this process created and mapped. Its name stays in /dev/shm until unlink(): peers
// open it by name, then it is unlinked so that nothing is left even if a process dies later.
class OwnSegment {
 public:
  // Creates /fastallreduce_<tag>_<pidns>_<pid>_<local_rank>_<random>, mode 0600, with every
  // page reserved (a full /dev/shm is a CommError here, not a SIGBUS later), and maps it.
  OwnSegment(const std::string& tag, int local_rank, size_t bytes);
  ~OwnSegment();
  OwnSegment(const OwnSegment&) = delete;
  OwnSegment& operator=(const OwnSegment&) = delete;

  char* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  const std::string& name() const { return name_; }
  // Removes the name (idempotent; never in a forked child, whose parent owns the name).
  void unlink();

 private:
  std::string name_;
  char* data_ = nullptr;
  size_t bytes_;
  int owner_pid_;
  bool linked_ = false;
};

// Maps a peer's segment only if it is ours to trust: owned by our effective user, readable and
// writable by nobody else, and at least `bytes` long (a short file is a SIGBUS later). Throws
// CommError naming `local_rank` and what is wrong.
void* map_peer_segment(const std::string& name, size_t bytes, int local_rank);

// Unlinks our segments whose creator (in our pid namespace) is dead: a rank killed between
// creating and unlinking a segment left them.
void remove_stale_segments();

// Whether `pid` runs (a zombie counts as dead).
bool process_alive(int pid);

// A test failpoint: FASTALLREDUCE_FAILPOINT=<name> ends the process there (as a kill would).
void failpoint(const char* name);

}  // namespace far
