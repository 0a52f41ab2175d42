#include "engine/communicator.h"

#include <ATen/record_function.h>

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "algorithms/hierarchical.h"
#include "algorithms/shm_collectives.h"
#include "engine/errors.h"

namespace far {
namespace {

// The torch.profiler event of each collective: "fastallreduce::" + its kind's name.
const char* record_name(Kind k) {
  constexpr int kKinds = static_cast<int>(Kind::kBroadcast) + 1;
  static const std::array<std::string, kKinds> names = [] {
    std::array<std::string, kKinds> a;
    for (int i = 0; i < kKinds; ++i) a[i] = std::string("fastallreduce::") + kind_name(static_cast<Kind>(i));
    return a;
  }();
  return names[static_cast<int>(k)].c_str();
}

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

Communicator::Communicator(c10::intrusive_ptr<c10d::Backend> pg,
                           c10::intrusive_ptr<c10d::Store> store, CommConfig cfg, Topology topo)
    : pg_(std::move(pg)), store_(std::move(store)), cfg_(std::move(cfg)), rank_(pg_->getRank()),
      size_(pg_->getSize()), topo_(std::move(topo)) {
  p2p_ = std::make_unique<P2P>(pg_, [this] { poll(); });
  if (topo_.cross) cross_ = std::make_unique<P2P>(topo_.cross, [this] { poll(); });
  if (topo_.local.pids.size() > 1) {
    // Segment names carry the group name; '/' is not allowed inside a POSIX shm name.
    std::string tag = cfg_.name;
    for (auto& ch : tag)
      if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    shm_ = std::make_unique<ShmGroup>(topo_.local_rank, topo_.local, store_, tag.substr(0, 40), cfg_.shm_slot_bytes,
                                      std::chrono::milliseconds(cfg_.timeout_ms));
  }
  worker_ = std::thread([this] { worker_loop(); });
  watchdog_ = std::thread([this] { watchdog_loop(); });
}

Communicator::~Communicator() {
  bool pending;
  {
    std::lock_guard<std::mutex> lk(mu_);
    pending = busy_ || !queue_.empty();
  }
  if (pending) {
    // Destroyed with work outstanding: abandon it rather than block teardown.
    {
      std::lock_guard<std::mutex> rl(reason_mu_);
      if (reason_.empty()) reason_ = "communicator destroyed while collectives were pending";
    }
    aborted_ = true;
    interrupt_transports();
  }
  close();
}

void Communicator::interrupt_transports() {
  p2p_->interrupt();
  if (cross_) cross_->interrupt();
}

void Communicator::watchdog_loop() {
  pthread_setname_np(pthread_self(), "far-watchdog");
  auto next_store_poll = Clock::now();
  std::unique_lock<std::mutex> lk(wd_mu_);
  while (!wd_stop_) {
    wd_cv_.wait_for(lk, std::chrono::milliseconds(20));
    if (wd_stop_) break;
    if (!in_op_ || fired_ || aborted_) continue;
    const auto now = Clock::now();
    if (now.time_since_epoch().count() >= deadline_ns_.load()) {
      fired_ = 1;
      interrupt_transports();
      continue;
    }
    if (now < next_store_poll) continue;
    next_store_poll = now + kStorePoll;
    try {
      if (store_->check({kAbortKey})) {
        fired_record_ = to_str(store_->get(kAbortKey));
        fired_ = 2;
        interrupt_transports();
      }
    } catch (const std::exception& e) {
      fired_record_ = std::string("fault|fastallreduce: rank ") + std::to_string(rank_) +
                      " lost the store (is rank 0 dead?): " + e.what();
      fired_ = 3;
      interrupt_transports();
    }
  }
}

std::string Communicator::abort_reason() const {
  std::lock_guard<std::mutex> lk(reason_mu_);
  return reason_;
}

bool Communicator::supports(Algo a) const {
  switch (a) {
    case Algo::kShm: return size_ == 1 || (shm_ && topo_.num_hosts == 1);
    case Algo::kHierarchical: return true;  // runs flat where it cannot run hierarchically
    default: return true;
  }
}

Algo Communicator::choose(size_t bytes) const {
  if (shm_ && topo_.num_hosts == 1) return Algo::kShm;
  if (shm_ && topo_.uniform && cross_) return Algo::kHierarchical;
  return choose_flat(bytes);
}

Algo Communicator::choose_flat(size_t bytes) const {
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
      t = Task{};
    } catch (...) {
      t = Task{};
      lk.lock();
      busy_ = false;
      if (!queue_.empty()) cv_.notify_all();
      throw;
    }
    lk.lock();
    busy_ = false;
    // Wake the worker only if an async op was queued meanwhile: a needless wake-up costs a
    // context switch on a core the peer ranks are running on.
    if (!queue_.empty()) cv_.notify_all();
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
  // Async ops (DDP buckets) run while the caller computes. When compute keeps every core busy,
  // as CPU training does, a normal-priority worker preempts a compute thread for each chunk
  // hand-off and slows backprop by more than the reduction itself costs (DDP step, 2 ranks on
  // 2 cores: README). Under SCHED_IDLE it runs on cores the compute leaves idle, at the latest
  // when the caller waits for the result; with a spare core nothing changes. Sync calls run on
  // the caller's thread at its priority. Failing to switch (a sandbox) only loses this.
  pthread_setname_np(pthread_self(), "far-worker");  // visible in top -H, perf, py-spy
  if (cfg_.worker_idle) {
    sched_param sp{};
    sp.sched_priority = 0;
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
  }
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
    // Drop the task's tensors and future before taking the lock: the last reference to a
    // Python-owned tensor may need the GIL, which a caller blocked on this lock could hold.
    t = Task{};
    lk.lock();
    busy_ = false;
  }
}

void Communicator::execute(Task& task) {
  const Call& c = task.call;
  try {
    if (aborted_) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
    RECORD_FUNCTION(record_name(c.kind), std::vector<c10::IValue>());
    Header h;
    h.rank = rank_;
    h.seq = task.seq;
    h.count = c.kind == Kind::kReduceScatter ? c.output.numel() : c.input.numel();
    h.dtype = static_cast<uint8_t>(to_dtype(c.input.scalar_type()));
    h.op = static_cast<uint8_t>(c.op);
    h.algo = static_cast<uint8_t>(c.algo);
    h.kind = static_cast<uint8_t>(c.kind);
    h.root = static_cast<uint32_t>(c.root);
    cur_ = h;
    deadline_ = Clock::now() + std::chrono::milliseconds(cfg_.timeout_ms);
    deadline_ns_ = deadline_.time_since_epoch().count();
    in_op_ = true;
    struct Clear {
      std::atomic<bool>& f;
      ~Clear() { f = false; }
    } clear{in_op_};
    run_algorithm(c, h);
    completed_.fetch_add(1);
    if (task.fut) task.fut->markCompleted(c10::IValue(c.output));
  } catch (const CommError& e) {
    if (!aborted_) {
      const char* kind = dynamic_cast<const MismatchError*>(&e) ? "mismatch"
                         : dynamic_cast<const CommTimeoutError*>(&e) ? "timeout" : "fault";
      const std::string mine = std::string(kind) + "|" + e.what();
      const std::string first = publish_abort(mine);
      // A peer that failed first may have torn its connections down already, and our own
      // error is then only the echo of its failure: report the first failure instead.
      if (first != mine) {
        try {
          throw_kind(first);
        } catch (...) {
          if (task.fut) {
            task.fut->setError(std::current_exception());
            return;
          }
          throw;
        }
      }
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

void Communicator::run_gather_family(const Call& c, const Header& h) {
  if (!supports_gather_family())
    throw std::invalid_argument(std::string("fastallreduce: ") + kind_name(c.kind) + " needs every rank on one host");
  const Header wire = announce(h, Algo::kShm);
  if (size_ == 1) {  // every member of the family is a copy (or nothing) on one rank
    if (!c.output.is_same(c.input) && c.input.numel() > 0)
      std::memcpy(c.output.data_ptr(), c.input.data_ptr(), c.input.nbytes());
    return;
  }
  FamilyJob job;
  job.kind = c.kind;
  job.in = static_cast<const char*>(c.input.data_ptr());
  job.out = static_cast<char*>(c.output.data_ptr());
  job.count = h.count;
  job.dtype = to_dtype(c.input.scalar_type());
  job.op = c.op;
  job.divisor = size_;
  const auto& locals = topo_.local.group_ranks;
  job.root = static_cast<int>(std::find(locals.begin(), locals.end(), c.root) - locals.begin());
  std::function<void()> poll_fn = [this] { poll(); };
  ShmContext ctx{*shm_, wire, deadline_, poll_fn};
  shm_gather_family(ctx, job, shm_options());
}

Header Communicator::announce(const Header& h, Algo algo) {
  last_algo_.store(static_cast<int>(algo));
  Header wire = h;
  wire.algo = static_cast<uint8_t>(algo);
  cur_ = wire;
  if (debug_log())
    std::fprintf(stderr, "[fastallreduce %s rank %d] %s\n", cfg_.name.c_str(), rank_, wire.describe().c_str());
  return wire;
}

ShmOptions Communicator::shm_options() const {
  ShmOptions so = cfg_.shm;
  so.threads = cfg_.algo.threads;
  return so;
}

void Communicator::run_algorithm(const Call& c, const Header& h) {
  if (c.kind != Kind::kAllreduce) return run_gather_family(c, h);
  Algo algo = c.algo == Algo::kAuto ? choose(c.output.nbytes()) : c.algo;
  // Hierarchical on hosts of different sizes (or with one rank per host) runs flat.
  if (algo == Algo::kHierarchical && !(shm_ && topo_.uniform && cross_)) algo = choose_flat(c.output.nbytes());
  if (algo == Algo::kShm && !supports(Algo::kShm))
    throw std::invalid_argument("fastallreduce: algorithm=shm needs every rank on one host");
  const bool shm_path = (algo == Algo::kShm || algo == Algo::kHierarchical) && size_ > 1;
  if (!shm_path && !c.output.is_same(c.input) && c.input.numel() > 0)
    std::memcpy(c.output.data_ptr(), c.input.data_ptr(), c.input.nbytes());
  const Header wire = announce(h, algo);
  if (size_ == 1) return;
  Job job;
  job.src = c.input.data_ptr();
  job.buf = c.output.data_ptr();
  job.count = static_cast<size_t>(c.output.numel());
  job.op = c.op;
  job.divisor = size_;
  job.dtype = to_dtype(c.output.scalar_type());
  if (shm_path) {
    const ShmOptions so = shm_options();
    std::function<void()> poll_fn = [this] { poll(); };
    ShmContext ctx{*shm_, wire, deadline_, poll_fn};
    if (algo == Algo::kShm) {
      shm_allreduce(ctx, job, so);
    } else {
      if (cross_->size() > 1) check_header(*cross_, wire);
      hierarchical_allreduce(ctx, *cross_, job, so, cfg_.algo, cfg_.cost, staging_);
    }
    return;
  }
  check_header(*p2p_, wire);
  switch (algo) {
    case Algo::kRing: ring_allreduce(*p2p_, job, cfg_.algo, staging_); break;
    case Algo::kHalvingDoubling: halving_doubling_allreduce(*p2p_, job, cfg_.algo, staging_); break;
    default: throw std::invalid_argument(std::string("algorithm not available: ") + algo_name(algo));
  }
}

void Communicator::check_header(P2P& t, const Header& mine) {
  // Every rank compares with its left neighbour before any data moves: if any two ranks
  // differ, some neighbour pair differs, and the rank that sees it aborts without sending
  // data, so no rank can complete the collective with wrong data.
  char* in = hdr_staging_.get(0, sizeof(Header));
  const int p = t.size(), me = t.rank();
  Request r = t.irecv((me - 1 + p) % p, in, sizeof(Header));
  Request s = t.isend((me + 1) % p, &mine, sizeof(Header));
  t.wait(r);
  t.wait(s);
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
  const int fired = fired_.load();
  if (fired == 1) fail_timeout();
  if (fired >= 2) {
    {
      std::lock_guard<std::mutex> lk(reason_mu_);
      if (reason_.empty()) reason_ = fired_record_.substr(fired_record_.find('|') + 1);
    }
    aborted_ = true;
    const std::string report = fired == 2 ? missing_ranks_report() : "";
    throw_kind(fired_record_ + report);
  }
  if (aborted_) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
  if (Clock::now() >= deadline_) fail_timeout();
}

void Communicator::fail_timeout() {
  std::ostringstream os;
  os << "fastallreduce: rank " << rank_ << " timed out after " << cfg_.timeout_ms / 1000.0
     << " s in " << cur_.describe();
  publish_abort("timeout|" + os.str());
  throw CommTimeoutError(os.str() + missing_ranks_report());
}

std::string Communicator::publish_abort(const std::string& record) {
  {
    std::lock_guard<std::mutex> lk(reason_mu_);
    if (reason_.empty()) reason_ = record.substr(record.find('|') + 1);
  }
  aborted_ = true;
  staging_.leak();
  hdr_staging_.leak();
  try {
    return to_str(store_->compareSet(kAbortKey, {}, to_bytes(record)));
  } catch (const std::exception&) {
    // The store is gone (rank 0 died): peers find out through their own transport errors.
    return record;
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
  interrupt_transports();
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
  {
    std::lock_guard<std::mutex> lk(wd_mu_);
    wd_stop_ = true;
    wd_cv_.notify_all();
  }
  if (watchdog_.joinable()) watchdog_.join();
}

}  // namespace far
