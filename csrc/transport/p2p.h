// Point-to-point transport over a torch.distributed backend (Gloo for CPU tensors).
// The only thing the ring and halving-doubling algorithms know about moving bytes.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "common/types.h"

namespace far {

struct Request {
  c10::intrusive_ptr<c10d::Work> work;
  int peer = -1;
  bool send = false;
  size_t bytes = 0;
  bool collective = false;  // the backend's own allreduce (no abort(): waited on its future)
  explicit operator bool() const { return work.defined(); }
};

class P2P {
 public:
  // `poll` is called while a wait is slow; it throws to abandon the wait (abort, deadline).
  P2P(c10::intrusive_ptr<c10d::Backend> backend, std::function<void()> poll);

  int rank() const { return rank_; }
  int size() const { return size_; }

  Request isend(int peer, const void* data, size_t bytes);
  Request irecv(int peer, void* data, size_t bytes);
  // The backend's own in-place allreduce of `count` elements at `data` over the whole group
  // (Gloo's ring in one Work, every rank gets the same bits): sum, product, max or min; the
  // caller divides for avg. Unlike send/recv it cannot be aborted, so Gloo is given a timeout:
  // `deadline` plus a grace, so that ours fires first and an abandoned op still ends by itself.
  Request iallreduce(void* data, size_t count, DType dtype, RedOp op, std::chrono::steady_clock::time_point deadline);
  // Blocks until done. Throws CommError naming the peer when the transport fails, or whatever
  // `poll` throws once the wait was interrupted.
  void wait(Request& req);
  // From another thread (the engine's watchdog): wake the blocked wait, for good. Gloo closes
  // every connection when a wait times out, so waits are never given a timeout of their own;
  // deadlines and aborts arrive through here instead.
  void interrupt();
  // Undoes interrupt() when the wait it targeted had completed anyway (a deadline that fired as
  // the op finished); called only when no wait is in progress.
  void clear_interrupt();

 private:
  // Wakes a collective's wait: its completion (the future's callback, on Gloo's thread, which
  // may run after this P2P is gone: hence shared) or interrupt().
  struct Wake {
    std::mutex mu;
    std::condition_variable cv;
  };
  // Until the collective completes (true, or its error thrown) or interrupt() (false).
  bool wait_collective(const c10::intrusive_ptr<c10d::Work>& work);

  c10::intrusive_ptr<c10d::Backend> backend_;  // called directly: no dispatcher round trip per message
  std::function<void()> poll_;
  int rank_, size_;
  std::mutex mu_;
  c10::intrusive_ptr<c10d::Work> current_;
  std::atomic<bool> interrupted_{false};
  std::shared_ptr<Wake> wake_ = std::make_shared<Wake>();
};

}  // namespace far
