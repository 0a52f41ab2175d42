#include "transport/p2p.h"

#include <ATen/core/ivalue.h>

#include <optional>

#include "common/aten.h"
#include "common/errors.h"

namespace far {
namespace {
constexpr int kTag = 7;
// Gloo's own timeout on a collective, past our deadline: long enough for the watchdog to fire
// first and report, short enough that an abandoned op ends (and frees Gloo's thread) soon after.
constexpr auto kCollectiveGrace = std::chrono::seconds(5);

c10d::ReduceOp reduce_op(RedOp op) {
  switch (op) {
    case RedOp::kSum: return c10d::ReduceOp::SUM;
    case RedOp::kProduct: return c10d::ReduceOp::PRODUCT;
    case RedOp::kMax: return c10d::ReduceOp::MAX;
    case RedOp::kMin: return c10d::ReduceOp::MIN;
    case RedOp::kAvg: break;
  }
  throw std::logic_error("fastallreduce: the transport's allreduce has no avg (sum, then divide)");
}

// "sending to rank N", "receiving from rank N" or the collective, for error messages.
std::string describe(const Request& req, int size) {
  if (req.collective) return "in the transport's allreduce over " + std::to_string(size) + " ranks";
  return std::string(req.send ? "sending to" : "receiving from") + " rank " + std::to_string(req.peer);
}

// The transport's error `error` while doing `what`: always one of ours, never the transport's own.
[[noreturn]] void fail(const std::string& what, const std::string& error) {
  if (error.find("Timed out") != std::string::npos)
    throw CommTimeoutError("fastallreduce: transport timed out " + what + ": " + error.substr(0, 400));
  throw CommError("fastallreduce: transport failure " + what + ": " + error.substr(0, 400));
}

at::Tensor wrap(const void* data, size_t bytes) {
  return at::from_blob(const_cast<void*>(data), {static_cast<int64_t>(bytes)},
                       at::TensorOptions().dtype(at::kByte));
}
}  // namespace

P2P::P2P(c10::intrusive_ptr<c10d::Backend> backend, std::function<void()> poll)
    : backend_(std::move(backend)), poll_(std::move(poll)), rank_(backend_->getRank()), size_(backend_->getSize()) {}

Request P2P::isend(int peer, const void* data, size_t bytes) {
  Request req{{}, peer, true, bytes};
  std::vector<at::Tensor> t{wrap(data, bytes)};
  // Gloo throws right here (not in wait) when the peer's connection is closed already (the peer exited).
  try {
    req.work = backend_->send(t, peer, kTag);
  } catch (const std::exception& e) {
    fail(describe(req, size_), e.what());
  }
  return req;
}

Request P2P::irecv(int peer, void* data, size_t bytes) {
  Request req{{}, peer, false, bytes};
  std::vector<at::Tensor> t{wrap(data, bytes)};
  try {
    req.work = backend_->recv(t, peer, kTag);
  } catch (const std::exception& e) {
    fail(describe(req, size_), e.what());
  }
  return req;
}

Request P2P::iallreduce(void* data, size_t count, DType dtype, RedOp op,
                        std::chrono::steady_clock::time_point deadline) {
  std::vector<at::Tensor> t{at::from_blob(data, {static_cast<int64_t>(count)},
                                          at::TensorOptions().dtype(to_scalar_type(dtype)))};
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  c10d::AllreduceOptions opts;
  opts.reduceOp = reduce_op(op);
  opts.timeout = std::max(left, std::chrono::milliseconds(0)) + kCollectiveGrace;
  // Where the backend takes a collective's timeout from, read when the Work is made; then put
  // back, so that send/recv waits keep the long transport timeout.
  std::optional<std::chrono::milliseconds> saved;
  try {
    saved = backend_->getBackendOptions()->timeout;
  } catch (const c10::Error&) {  // a backend without options: opts.timeout only
  }
  Request req{{}, -1, false, count * dtype_size(dtype), true};
  if (saved) backend_->setTimeout(opts.timeout);
  std::optional<std::string> error;
  try {
    req.work = backend_->allreduce(t, opts);
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (saved) backend_->setTimeout(*saved);
  if (error) fail(describe(req, size_), *error);
  return req;
}

bool P2P::wait_collective(const c10::intrusive_ptr<c10d::Work>& work) {
  auto wake = wake_;
  auto done = std::make_shared<std::atomic<bool>>(false);
  work->getFuture()->addCallback([wake, done](c10::ivalue::Future&) {
    {
      std::lock_guard<std::mutex> lk(wake->mu);
      done->store(true);
    }
    wake->cv.notify_all();
  });
  {
    std::unique_lock<std::mutex> lk(wake->mu);
    wake->cv.wait(lk, [&] { return done->load() || interrupted_.load(); });
  }
  if (!done->load()) return false;  // abandoned: Gloo ends it by its own timeout
  return work->wait();              // completed: true, or the transport's error
}

void P2P::wait(Request& req) {
  if (!req) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (interrupted_) {
      poll_();
      throw CommError("fastallreduce: wait interrupted");
    }
    if (!req.collective) current_ = req.work;
  }
  bool ok = false;
  std::string error;
  try {
    ok = req.collective ? wait_collective(req.work) : req.work->wait();
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
  if (!error.empty()) fail(describe(req, size_), error);
  if (!ok) throw CommError("fastallreduce: transport wait returned without completing");
  req.work.reset();
}

void P2P::interrupt() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    interrupted_ = true;
    if (current_) current_->abort();
  }
  // Under the wake lock, so that a collective's wait cannot miss it between check and sleep.
  { std::lock_guard<std::mutex> lk(wake_->mu); }
  wake_->cv.notify_all();
}

void P2P::clear_interrupt() {
  std::lock_guard<std::mutex> lk(mu_);
  interrupted_ = false;
}

}  // namespace far
