#include "engine/communicator.h"

#include <ATen/record_function.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "engine/errors.h"

namespace far {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kStorePoll = std::chrono::milliseconds(100);
constexpr auto kReportWait = std::chrono::milliseconds(1500);
const std::string kAbortKey = "abort";

bool debug_log() {
  static const bool on = [] {
    const char* v = std::getenv("FASTALLREDUCE_LOG");
    return v && (std::strcmp(v, "debug") == 0 || std::strcmp(v, "DEBUG") == 0);
  }();
  return on;
}

std::string to_str(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }
std::vector<uint8_t> to_bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

// The abort record in the store is "<kind>|<message>"; the kind picks the exception class.
[[noreturn]] void throw_kind(const std::string& record) {
  const auto bar = record.find('|');
  const std::string kind = record.substr(0, bar), msg = bar == std::string::npos ? record : record.substr(bar + 1);
  if (kind == "mismatch") throw MismatchError(msg);
  if (kind == "timeout") throw CommTimeoutError(msg);
  throw CommError(msg);
}

}  // namespace

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kChar: return DType::kInt8;
    case at::kByte: return DType::kUInt8;
    case at::kInt: return DType::kInt32;
    case at::kLong: return DType::kInt64;
    case at::kBool: return DType::kBool;
    default: throw std::invalid_argument(std::string("fastallreduce: unsupported dtype ") + c10::toString(t));
  }
}

Communicator::Communicator(c10::intrusive_ptr<c10d::ProcessGroup> pg,
                           c10::intrusive_ptr<c10d::Store> store, CommConfig cfg)
    : pg_(std::move(pg)), store_(std::move(store)), cfg_(std::move(cfg)), rank_(pg_->getRank()),
      size_(pg_->getSize()) {
  p2p_ = std::make_unique<P2P>(pg_, [this] { poll(); });
  worker_ = std::thread([this] { worker_loop(); });
}

Communicator::~Communicator() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (busy_ || !queue_.empty()) {
      // Destroyed with work outstanding: abandon it rather than block teardown.
      aborted_ = true;
      std::lock_guard<std::mutex> rl(reason_mu_);
      if (reason_.empty()) reason_ = "communicator destroyed while collectives were pending";
    }
  }
  close();
}

std::string Communicator::abort_reason() const {
  std::lock_guard<std::mutex> lk(reason_mu_);
  return reason_;
}

Algo Communicator::choose(size_t bytes) const {
  return cfg_.cost.hd_us(bytes, size_) <= cfg_.cost.ring_us(bytes, size_) ? Algo::kHalvingDoubling
                                                                           : Algo::kRing;
}

void Communicator::run(Call call) {
  std::unique_lock<std::mutex> lk(mu_);
  if (closed_ || stop_) throw ClosedError("fastallreduce: communicator is closed");
  if (aborted_) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
  if (queue_.empty() && !busy_) {
    // FIFO holds: nothing is queued or running, so this op is next. Run it here.
    busy_ = true;
    Task t{std::move(call), next_seq_++, {}};
    lk.unlock();
    try {
      execute(t);
    } catch (...) {
      t = Task{};  // drop the tensors before taking mu_ (see worker_loop)
      lk.lock();
      busy_ = false;
      cv_.notify_all();
      throw;
    }
    t = Task{};
    lk.lock();
    busy_ = false;
    cv_.notify_all();
    return;
  }
  auto fut = c10::make_intrusive<c10::ivalue::Future>(c10::TensorType::get());
  queue_.push_back(Task{std::move(call), next_seq_++, fut});
  cv_.notify_all();
  lk.unlock();
  fut->wait();
  if (fut->hasError()) std::rethrow_exception(fut->exception_ptr());
}

c10::intrusive_ptr<c10::ivalue::Future> Communicator::run_async(Call call) {
  auto fut = c10::make_intrusive<c10::ivalue::Future>(c10::TensorType::get());
  std::lock_guard<std::mutex> lk(mu_);
  if (closed_ || stop_) throw ClosedError("fastallreduce: communicator is closed");
  if (aborted_) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
  queue_.push_back(Task{std::move(call), next_seq_++, fut});
  cv_.notify_all();
  return fut;
}

void Communicator::worker_loop() {
  for (;;) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return (!queue_.empty() && !busy_) || (stop_ && queue_.empty() && !busy_); });
    if (queue_.empty()) return;
    Task t = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lk.unlock();
    try {
      execute(t);
    } catch (...) {
      // execute() already delivered the error through the task's future.
    }
    // Dropping a tensor that Python also references takes the GIL (torch's PyObject
    // preservation): never while holding mu_, or a Python thread holding the GIL and waiting
    // for mu_ in run_async() deadlocks with us.
    t = Task{};
    lk.lock();
    busy_ = false;
    cv_.notify_all();
  }
}

void Communicator::execute(Task& task) {
  const Call& c = task.call;
  try {
    if (aborted_) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
    RECORD_FUNCTION("fastallreduce::allreduce", std::vector<c10::IValue>());
    Header h;
    h.rank = rank_;
    h.seq = task.seq;
    h.count = c.input.numel();
    h.dtype = static_cast<uint8_t>(to_dtype(c.input.scalar_type()));
    h.op = static_cast<uint8_t>(c.op);
    h.algo = static_cast<uint8_t>(c.algo);
    cur_ = h;
    deadline_ = Clock::now() + std::chrono::milliseconds(cfg_.timeout_ms);
    next_store_poll_ = Clock::now() + kStorePoll;
    if (!c.output.is_same(c.input) && c.input.numel() > 0)
      std::memcpy(c.output.data_ptr(), c.input.data_ptr(), c.input.nbytes());
    run_algorithm(c, h);
    completed_.fetch_add(1);
    if (task.fut) task.fut->markCompleted(c10::IValue(c.output));
  } catch (const CommError& e) {
    if (!aborted_) {
      const char* kind = dynamic_cast<const MismatchError*>(&e) ? "mismatch"
                         : dynamic_cast<const CommTimeoutError*>(&e) ? "timeout" : "fault";
      publish_abort(std::string(kind) + "|" + e.what());
    }
    if (task.fut) {
      task.fut->setError(std::current_exception());
      return;
    }
    throw;
  } catch (...) {
    if (task.fut) {
      task.fut->setError(std::current_exception());
      return;
    }
    throw;
  }
}

void Communicator::run_algorithm(const Call& c, const Header& h) {
  Algo algo = c.algo == Algo::kAuto ? choose(c.output.nbytes()) : c.algo;
  last_algo_.store(static_cast<int>(algo));
  Header wire = h;
  wire.algo = static_cast<uint8_t>(algo);
  cur_ = wire;
  if (debug_log())
    std::fprintf(stderr, "[fastallreduce %s rank %d] %s\n", cfg_.name.c_str(), rank_, wire.describe().c_str());
  if (size_ == 1) return;
  check_header(wire);
  Job job;
  job.buf = c.output.data_ptr();
  job.count = static_cast<size_t>(c.output.numel());
  job.op = c.op;
  job.divisor = size_;
  job.dtype = to_dtype(c.output.scalar_type());
  switch (algo) {
    case Algo::kRing: ring_allreduce(*p2p_, job, cfg_.algo, staging_); break;
    case Algo::kHalvingDoubling: halving_doubling_allreduce(*p2p_, job, cfg_.algo, staging_); break;
    default: throw std::invalid_argument(std::string("algorithm not available: ") + algo_name(algo));
  }
}

void Communicator::check_header(const Header& mine) {
  // Every rank compares with its left neighbour before any data moves: if any two ranks
  // differ, some neighbour pair differs, and the rank that sees it aborts without sending
  // data, so no rank can complete the collective with wrong data.
  char* in = hdr_staging_.get(0, sizeof(Header));
  Request s = p2p_->isend((rank_ + 1) % size_, &mine, sizeof(Header));
  Request r = p2p_->irecv((rank_ - 1 + size_) % size_, in, sizeof(Header));
  p2p_->wait(r);
  p2p_->wait(s);
  Header theirs;
  std::memcpy(&theirs, in, sizeof(Header));
  if (!mine.same_call(theirs)) {
    std::ostringstream os;
    os << "fastallreduce: mismatched collective: rank " << rank_ << " called "
       << (mine.magic == theirs.magic ? mine.describe() : "?") << " but rank " << theirs.rank
       << " called " << theirs.describe();
    throw MismatchError(os.str());
  }
}

void Communicator::poll() {
  if (aborted_) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
  const auto now = Clock::now();
  if (now >= next_store_poll_) {
    next_store_poll_ = now + kStorePoll;
    bool remote = false;
    std::string record;
    try {
      if (store_->check({kAbortKey})) {
        remote = true;
        record = to_str(store_->get(kAbortKey));
      }
    } catch (const std::exception& e) {
      remote = true;
      record = std::string("fault|fastallreduce: rank ") + std::to_string(rank_) +
               " lost the store during " + cur_.describe() + " (is rank 0 dead?): " + e.what();
    }
    if (remote) {
      {
        std::lock_guard<std::mutex> lk(reason_mu_);
        if (reason_.empty()) reason_ = record.substr(record.find('|') + 1);
      }
      aborted_ = true;
      const std::string report = missing_ranks_report();
      throw_kind(record + report);
    }
  }
  if (now >= deadline_) fail_timeout();
}

void Communicator::fail_timeout() {
  std::ostringstream os;
  os << "fastallreduce: rank " << rank_ << " timed out after " << cfg_.timeout_ms / 1000.0
     << " s in " << cur_.describe();
  publish_abort("timeout|" + os.str());
  throw CommTimeoutError(os.str() + missing_ranks_report());
}

void Communicator::publish_abort(const std::string& record) {
  {
    std::lock_guard<std::mutex> lk(reason_mu_);
    if (reason_.empty()) reason_ = record.substr(record.find('|') + 1);
  }
  aborted_ = true;
  staging_.leak();
  hdr_staging_.leak();
  try {
    store_->compareSet(kAbortKey, {}, to_bytes(record));
  } catch (const std::exception&) {
    // The store is gone (rank 0 died): peers find out through their own transport errors.
  }
}

std::string Communicator::missing_ranks_report() {
  // Each rank that fails publishes which collective it was in; after a short wait the ranks
  // that did not publish that number are the ones that never arrived (dead, hung, or calling
  // something else).
  staging_.leak();
  hdr_staging_.leak();
  try {
    store_->set("status/" + std::to_string(rank_), to_bytes(std::to_string(cur_.seq)));
    std::vector<int> missing;
    const auto until = Clock::now() + kReportWait;
    for (;;) {
      missing.clear();
      for (int r = 0; r < size_; ++r) {
        const std::string key = "status/" + std::to_string(r);
        if (!store_->check({key}) || to_str(store_->get(key)) != std::to_string(cur_.seq)) missing.push_back(r);
      }
      if (missing.empty() || Clock::now() >= until) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (missing.empty()) return " [every rank reached this collective]";
    std::ostringstream os;
    os << " [ranks that did not reach allreduce #" << cur_.seq << ": ";
    for (size_t i = 0; i < missing.size(); ++i) os << (i ? ", " : "") << missing[i];
    os << "]";
    return os.str();
  } catch (const std::exception&) {
    return " [store unreachable: could not tell which ranks are missing]";
  }
}

void Communicator::abort(const std::string& reason) {
  publish_abort("fault|fastallreduce: rank " + std::to_string(rank_) + " aborted: " + reason);
}

void Communicator::close() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (closed_.exchange(true)) return;
    stop_ = true;
    cv_.notify_all();
  }
  if (worker_.joinable()) {
    if (std::this_thread::get_id() == worker_.get_id())
      worker_.detach();  // close() from a future callback on the worker itself
    else
      worker_.join();
  }
}

}  // namespace far
