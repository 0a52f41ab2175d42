// Point-to-point transport over a torch.distributed ProcessGroup (Gloo for CPU tensors).
// The only thing the ring and halving-doubling algorithms know about moving bytes.
#pragma once
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace far {

struct Request {
  c10::intrusive_ptr<c10d::Work> work;
  int peer = -1;
  bool send = false;
  size_t bytes = 0;
  explicit operator bool() const { return work.defined(); }
};

class P2P {
 public:
  // `poll` is called while a wait is slow; it throws to abandon the wait (abort, deadline).
  // `poll` runs on a watcher thread while a wait is in progress; what it throws aborts the wait.
  P2P(c10::intrusive_ptr<c10d::ProcessGroup> pg, std::function<void()> poll);
  ~P2P();

  int rank() const { return rank_; }
  int size() const { return size_; }

  Request isend(int peer, const void* data, size_t bytes);
  Request irecv(int peer, void* data, size_t bytes);
  // Blocks until done. Throws CommError naming the peer when the transport fails, or whatever
  // `poll` throws.
  void wait(Request& req);

 private:
  void watch_loop();

  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
  std::function<void()> poll_;
  int rank_, size_;

  // Gloo closes every pair of its context when a timed wait expires, so waits are untimed and a
  // watcher thread polls (abort, deadline) and aborts the pending operation instead.
  std::mutex wmu_;
  std::mutex poll_mu_;  // poll_ runs on one thread at a time
  std::condition_variable wcv_;
  c10::intrusive_ptr<c10d::Work> watched_;
  std::exception_ptr watch_error_;
  bool stop_ = false;
  std::thread watcher_;
};

}  // namespace far
