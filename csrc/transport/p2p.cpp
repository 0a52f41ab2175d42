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
    : pg_(std::move(pg)), poll_(std::move(poll)), rank_(pg_->getRank()), size_(pg_->getSize()) {}

Request P2P::isend(int peer, const void* data, size_t bytes) {
  std::vector<at::Tensor> t{wrap(data, bytes)};
  return Request{pg_->send(t, peer, kTag), peer, true, bytes};
}

Request P2P::irecv(int peer, void* data, size_t bytes) {
  std::vector<at::Tensor> t{wrap(data, bytes)};
  return Request{pg_->recv(t, peer, kTag), peer, false, bytes};
}

void P2P::wait(Request& req) {
  if (!req) return;
  for (;;) {
    try {
      req.work->wait(kSlice);
      req.work.reset();
      return;
    } catch (const CommError&) {
      throw;
    } catch (const std::exception& e) {
      // Gloo reports an expired wait as "Timed out waiting ..."; the operation stays posted
      // and can be waited for again. Anything else is a real transport failure.
      std::string what = e.what();
      if (what.find("Timed out") == std::string::npos && what.find("timed out") == std::string::npos)
        throw CommError(std::string("transport failure ") + (req.send ? "sending to" : "receiving from") +
                        " rank " + std::to_string(req.peer) + ": " + what.substr(0, 400));
    }
    poll_();
  }
}

}  // namespace far
