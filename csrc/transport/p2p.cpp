#include "transport/p2p.h"

#include "common/errors.h"

namespace far {
namespace {
constexpr int kTag = 7;

at::Tensor wrap(const void* data, size_t bytes) {
  return at::from_blob(const_cast<void*>(data), {static_cast<int64_t>(bytes)},
                       at::TensorOptions().dtype(at::kByte));
}
}  // namespace

P2P::P2P(c10::intrusive_ptr<c10d::Backend> backend, std::function<void()> poll)
    : backend_(std::move(backend)), poll_(std::move(poll)), rank_(backend_->getRank()), size_(backend_->getSize()) {}

Request P2P::isend(int peer, const void* data, size_t bytes) {
  std::vector<at::Tensor> t{wrap(data, bytes)};
  return Request{backend_->send(t, peer, kTag), peer, true, bytes};
}

Request P2P::irecv(int peer, void* data, size_t bytes) {
  std::vector<at::Tensor> t{wrap(data, bytes)};
  return Request{backend_->recv(t, peer, kTag), peer, false, bytes};
}

void P2P::wait(Request& req) {
  if (!req) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (interrupted_) {
      poll_();
      throw CommError("fastallreduce: wait interrupted");
    }
    current_ = req.work;
  }
  bool ok = false;
  std::string error;
  try {
    ok = req.work->wait();
  } catch (const std::exception& e) {
    error = e.what();
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    current_.reset();
  }
  if (interrupted_) {
    poll_();
    throw CommError("fastallreduce: wait interrupted");
  }
  if (!error.empty() && error.find("Timed out") != std::string::npos)
    throw CommTimeoutError(std::string("fastallreduce: transport timed out ") + (req.send ? "sending to" : "receiving from") +
                           " rank " + std::to_string(req.peer) + ": " + error.substr(0, 400));
  if (!error.empty())
    throw CommError(std::string("fastallreduce: transport failure ") + (req.send ? "sending to" : "receiving from") +
                    " rank " + std::to_string(req.peer) + ": " + error.substr(0, 400));
  if (!ok) throw CommError("fastallreduce: transport wait returned without completing");
  req.work.reset();
}

void P2P::interrupt() {
  std::lock_guard<std::mutex> lk(mu_);
  interrupted_ = true;
  if (current_) current_->abort();
}

void P2P::clear_interrupt() {
  std::lock_guard<std::mutex> lk(mu_);
  interrupted_ = false;
}

}  // namespace far
