#include "transport/p2p.h"

#include "engine/errors.h"

namespace far {
namespace {
constexpr int kTag = 7;
// How long one wait slice lasts before the poll callback gets a chance to run.
constexpr std::chrono::milliseconds kSlice{50};

at::Tensor wrap(const void* data, size_t bytes) {
  return at::from_blob(const_cast<void*>(data), {static_cast<int64_t>(bytes)},
                       at::TensorOptions().dtype(at::kByte));
}
}  // namespace

P2P::P2P(c10::intrusive_ptr<c10d::ProcessGroup> pg, std::function<void()> poll)
    : pg_(std::move(pg)), poll_(std::move(poll)), rank_(pg_->getRank()), size_(pg_->getSize()) {
  watcher_ = std::thread([this] { watch_loop(); });
}

P2P::~P2P() {
  {
    std::lock_guard<std::mutex> lk(wmu_);
    stop_ = true;
  }
  wcv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

Request P2P::isend(int peer, const void* data, size_t bytes) {
  std::vector<at::Tensor> t{wrap(data, bytes)};
  return Request{pg_->send(t, peer, kTag), peer, true, bytes};
}

Request P2P::irecv(int peer, void* data, size_t bytes) {
  std::vector<at::Tensor> t{wrap(data, bytes)};
  return Request{pg_->recv(t, peer, kTag), peer, false, bytes};
}

void P2P::watch_loop() {
  // Lock order everywhere: poll_mu_, then wmu_.
  std::unique_lock<std::mutex> lk(wmu_);
  while (!stop_) {
    wcv_.wait_for(lk, kSlice);
    if (stop_ || !watched_ || watch_error_) continue;
    auto w = watched_;
    lk.unlock();
    std::unique_lock<std::mutex> pl(poll_mu_);
    std::exception_ptr err;
    try {
      poll_();
    } catch (...) {
      err = std::current_exception();
    }
    lk.lock();
    if (err && watched_ == w) {
      watch_error_ = err;
      w->abort();  // the blocked wait returns; wait() rethrows watch_error_
    }
  }
}

void P2P::wait(Request& req) {
  if (!req) return;
  {
    std::lock_guard<std::mutex> lk(wmu_);
    watched_ = req.work;
    watch_error_ = nullptr;
  }
  std::exception_ptr transport_error;
  std::string what;
  try {
    req.work->wait();  // untimed: Gloo's own timeout (the group's) still bounds it
  } catch (const std::exception& e) {
    transport_error = std::current_exception();
    what = e.what();
  }
  // After a transport error, let a poll in flight on the watcher finish and record its verdict
  // (a timeout or remote abort explains the error better than the transport does).
  std::unique_lock<std::mutex> pl(poll_mu_, std::defer_lock);
  if (transport_error) pl.lock();
  std::exception_ptr watch_error;
  {
    std::lock_guard<std::mutex> lk(wmu_);
    watched_.reset();
    watch_error = watch_error_;
    watch_error_ = nullptr;
  }
  req.work.reset();
  if (watch_error) std::rethrow_exception(watch_error);
  if (transport_error) {
    // Gloo's own timeout equals ours and starts later: report a passed deadline or a remote
    // abort as such (poll throws) rather than as a transport failure.
    poll_();
    throw CommError(std::string("transport failure ") + (req.send ? "sending to" : "receiving from") + " rank " +
                    std::to_string(req.peer) + ": " + what.substr(0, 400));
  }
}

}  // namespace far
