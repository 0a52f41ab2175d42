// Construction, the FIFO of collectives, the worker thread, fork safety and shutdown.
#include "engine/communicator.h"

#include <pthread.h>
#include <sched.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include <c10/core/StreamGuard.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "common/errors.h"

namespace far {
namespace {

// Bumped in every forked child: a communicator made before the fork knows it is in a child
// from one atomic load (getpid() is a system call on every collective otherwise).
std::atomic<uint64_t> g_fork_generation{0};
const bool g_atfork_installed = [] {
  pthread_atfork(nullptr, nullptr, [] { g_fork_generation.fetch_add(1); });
  return true;
}();

c10::intrusive_ptr<c10d::Store> prefixed(const std::string& p, const c10::intrusive_ptr<c10d::Store>& s) {
  return c10::make_intrusive<c10d::PrefixStore>(p, s);
}

}  // namespace

Communicator::Communicator(c10::intrusive_ptr<c10d::Store> store, int rank, int size, CommOptions opts)
    : store_(std::move(store)), bounded_store_(std::make_unique<BoundedStore>(store_)), rank_(rank), size_(size),
      opts_(std::move(opts)), fork_generation_(g_fork_generation.load()), q_(std::make_shared<Queue>()) {
  (void)g_atfork_installed;
  if (!opts_.make_backend) throw value_error("fastallreduce: no transport backend factory");
  if (size_ < 1 || rank_ < 0 || rank_ >= size_)
    throw value_error("fastallreduce: rank " + std::to_string(rank_) + " of " + std::to_string(size_) + " is invalid");
  // Validation runs before the first store wait, so a bad local value never waits out a timeout.
  const auto wait = std::chrono::milliseconds(opts_.config.timeout_ms.value_or(cfg_.timeout_ms));
  cfg_ = agree_config(*store_, rank_, size_, opts_.config, std::min(wait, std::chrono::milliseconds(kMaxTimeoutMs)));
  const auto timeout = std::chrono::milliseconds(cfg_.timeout_ms);
  topo_ = discover_topology(*store_, rank_, size_, opts_.host_id, timeout);
  cfg_.algo.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                      static_cast<int>(topo_.local.group_ranks.size()));
  // Gloo closes every connection when one of its own waits times out: give it more time than
  // ours, so that the communicator's deadline (which reports the missing ranks) fires first.
  const auto transport_timeout = timeout * 2 + std::chrono::seconds(30);
  pg_ = opts_.make_backend(prefixed("p2p/", store_), rank_, size_, transport_timeout);
  poll_fn_ = [this] { poll(); };
  p2p_ = std::make_unique<P2P>(pg_, poll_fn_);
  const int local_size = static_cast<int>(topo_.local.group_ranks.size());
  if (topo_.num_hosts > 1 && topo_.uniform && local_size > 1) {
    // Cross-host group of the ranks with my local index (one per index, all used at once).
    cross_pg_ = opts_.make_backend(prefixed("cross/" + std::to_string(topo_.local_rank) + "/", store_), topo_.host,
                          topo_.num_hosts, transport_timeout);
    cross_ = std::make_unique<P2P>(cross_pg_, poll_fn_);
  }
  if (local_size > 1) {
    // Segment names carry the communicator's name; '/' is not allowed inside a POSIX shm name.
    std::string tag = opts_.name;
    for (auto& ch : tag)
      if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    // Across hosts only the hierarchical algorithm uses these segments, a slot per chunk.
    const size_t slot = topo_.num_hosts > 1 ? cfg_.hier_slot_bytes : cfg_.shm_slot_bytes;
    shm_ = std::make_unique<ShmGroup>(topo_.local_rank, topo_.local, store_, tag.substr(0, 40), slot, timeout);
    registry_ = std::make_shared<ShmRegistry>(shm_.get(), tag.substr(0, 40));
  }
  opts_.make_backend = nullptr;  // the factory may hold interpreter objects: drop it now
  make_nccl_ = std::move(opts_.make_nccl);  // kept until the first CUDA call or close()
  opts_.make_nccl = nullptr;
  cuda_ok_ = static_cast<bool>(make_nccl_);
  worker_ = std::make_unique<std::thread>([this, q = q_] { worker_loop(q); });
  worker_id_ = worker_->get_id();
  watchdog_ = std::make_unique<std::thread>([this] { watchdog_loop(); });
}

void Communicator::dispose(Communicator* c) {
  if (c && !c->forked()) delete c;
}

Communicator::~Communicator() {
  if (g_fork_generation.load() != fork_generation_) {
    // A forked child's copy: the threads do not exist here and the transports are the parent's.
    // Touch nothing the parent owns; let the memory go with the child.
    (void)worker_.release();
    (void)watchdog_.release();
    (void)p2p_.release();
    (void)cross_.release();
    (void)shm_.release();
    (void)pg_.release();
    (void)cross_pg_.release();
    (void)nccl_.release();
    (void)new BackendFactory(std::move(make_nccl_));  // holds a Python object: leaked, like the rest
    (void)store_.release();
    (void)bounded_store_.release();
    return;
  }
  bool pending;
  {
    std::lock_guard<std::mutex> lk(q_->mu);
    pending = q_->busy || !q_->tasks.empty();
  }
  if (pending && !closed_) {
    // Destroyed with work outstanding: abandon it here and tell every peer, so that nobody
    // waits for these collectives until the timeout.
    publish_abort("fault|fastallreduce: rank " + std::to_string(rank_) +
                  " destroyed its communicator while collectives were pending");
    interrupt_transports();
  }
  close();
  // An abandoned cross-host allreduce (Gloo's, no abort) may write into shared memory until its
  // own timeout ends it; the group's destructor waits for it, so it goes before the unmapping.
  cross_.reset();
  cross_pg_.reset();
  if (registry_) registry_->detach();  // before shm_ goes: registered tensors may live on
  if (worker_ && worker_->joinable()) {
    // Only when the last reference dropped on the worker thread itself (a future callback): it
    // returns into worker_loop, which from here on touches only the shared queue state.
    {
      std::lock_guard<std::mutex> lk(q_->mu);
      q_->gone = true;
    }
    worker_->detach();
  }
}

bool Communicator::forked() const { return g_fork_generation.load(std::memory_order_relaxed) != fork_generation_; }

void Communicator::check_usable() const {
  if (g_fork_generation.load(std::memory_order_relaxed) != fork_generation_)
    throw ClosedError("fastallreduce: this communicator was created in another process and cannot be used in a "
                      "forked child; create a new one in the child");
  if (closed_) throw ClosedError("fastallreduce: communicator is closed");
  if (aborted_) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
}

std::string Communicator::abort_reason() const {
  std::lock_guard<std::mutex> lk(reason_mu_);
  return reason_;
}

bool Communicator::supports(Algo a) const {
  switch (a) {
    case Algo::kShm: return single_host();
    case Algo::kDelegate:
    case Algo::kNccl: return false;  // chosen by the engine, never requested
    default: return true;  // hierarchical runs flat where it cannot run hierarchically
  }
}

Algo Communicator::choose(size_t bytes) const {
  if (shm_ && topo_.num_hosts == 1) return Algo::kShm;
  const Algo flat = choose_flat(bytes);
  if (shm_ && topo_.uniform && cross_) {
    // Hierarchical: per slot-sized chunk the shared-memory stages plus the cross-host allreduce
    // of each local rank's 1/L share among the H hosts (a swap between two); flat: every byte
    // among all ranks. Every term comes from constants agreed at construction, so every rank
    // decides alike.
    const int l = static_cast<int>(topo_.local.group_ranks.size());
    const double hier = cfg_.cost.hier_us(bytes, topo_.num_hosts, l, shm_->slot_bytes());
    if (hier <= std::min(cfg_.cost.hd_us(bytes, size_), cfg_.cost.ring_us(bytes, size_))) return Algo::kHierarchical;
  }
  return flat;
}

Algo Communicator::choose_flat(size_t bytes) const {
  return cfg_.cost.hd_us(bytes, size_) <= cfg_.cost.ring_us(bytes, size_) ? Algo::kHalvingDoubling : Algo::kRing;
}

// ---- the front door -------------------------------------------------------------------------

Call Communicator::admit(const Collective& c) {
  check_usable();
  try {
    return prepare(c);
  } catch (const ArgError& e) {
    reject(e);
  }
}

at::Tensor Communicator::run(const Collective& c) {
  Call call = admit(c);
  at::Tensor result = call.result();
  submit(std::move(call), /*sync=*/true);
  return result;
}

Communicator::FuturePtr Communicator::run_async(const Collective& c) { return submit(admit(c), /*sync=*/false); }

void Communicator::check_delegated(const Delegated& d) {
  check_usable();
  Call call;
  call.kind = d.kind;
  call.op = d.op;
  call.root = d.root;
  call.algo = Algo::kDelegate;
  call.header.kind = static_cast<uint8_t>(d.kind);
  call.header.op = static_cast<uint8_t>(d.op);
  call.header.root = static_cast<uint32_t>(d.root);
  call.header.dtype = static_cast<uint8_t>(d.dtype);
  call.header.count = static_cast<uint64_t>(std::max<int64_t>(0, d.count));
  call.header.algo = static_cast<uint8_t>(Algo::kDelegate);
  call.header.device = static_cast<uint8_t>(d.device);
  submit(std::move(call), /*sync=*/true);
}

void Communicator::reject(const ArgError& e) {
  // The call takes its sequence number like any other, so every rank stays in step; peers that
  // made the call find the rejection under that number (watchdog.cpp) and raise at once.
  uint64_t seq;
  {
    std::lock_guard<std::mutex> lk(q_->mu);
    seq = next_seq_++;
  }
  const std::string record = "rank " + std::to_string(rank_) + ": " + e.what();
  try {
    store_->set("reject/" + std::to_string(seq), std::vector<uint8_t>(record.begin(), record.end()));
  } catch (const std::exception&) {
    // No store: peers find out through the timeout, as for any lost rank.
  }
  throw e;
}

// ---- queue and threads ----------------------------------------------------------------------

Communicator::FuturePtr Communicator::submit(Call call, bool sync) {
  Queue& q = *q_;
  std::unique_lock<std::mutex> lk(q.mu);
  check_usable();  // again, under the lock: close() may have run since admit()
  if (sync && q.tasks.empty() && !q.busy) {
    // FIFO holds: nothing is queued or running, so this op is next. Run it here.
    q.busy = true;
    Task t{std::move(call), next_seq_++, {}, true, {}};
    lk.unlock();
    std::exception_ptr err = execute(t);
    t = Task{};
    lk.lock();
    q.busy = false;
    // Wake the worker only if an async op was queued meanwhile: a needless wake-up costs a
    // context switch on a core the peer ranks are running on.
    if (!q.tasks.empty()) q.cv.notify_all();
    lk.unlock();
    if (err) std::rethrow_exception(err);
    return {};
  }
  // A CUDA call's future is CUDA-aware (its events order the caller's use of the result).
  std::vector<c10::Device> devices;
  if (!sync && call.stream) devices.push_back(call.stream->device());
  auto fut = c10::make_intrusive<c10::ivalue::Future>(c10::TensorType::get(), std::move(devices));
  q.tasks.push_back(Task{std::move(call), next_seq_++, fut, sync, {}});
  q.cv.notify_all();
  lk.unlock();
  if (!sync) return fut;
  if (on_worker()) {
    // A synchronous call from a future callback: the worker is this thread, so waiting for it
    // would wait forever. Run the queue here, in order, up to and including this call.
    drain(fut);
  } else {
    fut->wait();
  }
  if (fut->hasError()) std::rethrow_exception(fut->exception_ptr());
  return {};
}

void Communicator::complete(Task& t, std::exception_ptr err) {
  if (!t.fut) return;
  // Callbacks run here, after the op has left the watchdog's accounting (a slow callback is
  // not the collective's time) and outside the queue lock (a callback may issue collectives).
  if (t.after && !err) {
    // A CUDA call: complete when NCCL's future does. Its callback runs on a stream that waits
    // for the NCCL kernels, so the events our future records come after them, and the caller's
    // stream is never made to wait (torch's Future::then does the same).
    t.after->addCallback([fut = t.fut, result = t.call.result()](c10::ivalue::Future& f) {
      if (f.hasError())
        fut->setError(f.exception_ptr());
      else
        fut->markCompleted(c10::IValue(result));
    });
    return;
  }
  // A CUDA call already ordered on the caller's stream records its events there.
  c10::OptionalStreamGuard guard(t.call.stream);
  if (err)
    t.fut->setError(err);
  else
    t.fut->markCompleted(c10::IValue(t.call.result()));
}

void Communicator::drain(const FuturePtr& until) {
  std::shared_ptr<Queue> q = q_;
  for (;;) {
    std::unique_lock<std::mutex> lk(q->mu);
    q->cv.wait(lk, [&] {
      return q->gone || (until && until->completed()) || (!q->tasks.empty() && !q->busy) ||
             (!until && q->stop && q->tasks.empty() && !q->busy);
    });
    if (q->gone || (until && until->completed()) || q->tasks.empty()) return;
    Task t = std::move(q->tasks.front());
    q->tasks.pop_front();
    q->busy = true;
    lk.unlock();
    std::exception_ptr err = execute(t);
    lk.lock();
    q->busy = false;
    if (!q->tasks.empty() || q->stop) q->cv.notify_all();
    lk.unlock();
    // May drop the last reference to this Communicator (q->gone): only `q` is used afterwards.
    complete(t, err);
    // Drop the task's tensors and future without the lock: the last reference to a
    // Python-owned tensor may need the GIL, which a thread blocked on this lock could hold.
    t = Task{};
  }
}

void Communicator::worker_loop(std::shared_ptr<Queue> q) {
  // Async ops (DDP buckets) run here while the caller computes, and the caller's wait() depends
  // on this thread, so it runs at normal priority: under SCHED_IDLE any other busy process (a
  // DataLoader worker) starves it completely, and a 16 MB async allreduce took 9-45 s instead
  // of 0.2 s beside one busy loop per core. FASTALLREDUCE_WORKER_IDLE=1 still asks for
  // SCHED_IDLE, for a machine with nothing else to run. Failing to switch only loses that.
  pthread_setname_np(pthread_self(), "far-worker");
  if (cfg_.worker_idle) {
    sched_param sp{};
    sp.sched_priority = 0;
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
  }
  drain(nullptr);
  (void)q;  // keeps the queue state alive until this thread is done with it
}

void Communicator::abort(const std::string& reason) {
  if (g_fork_generation.load() != fork_generation_) return;
  publish_abort("fault|fastallreduce: rank " + std::to_string(rank_) + " aborted: " + reason);
  interrupt_transports();
  if (registry_) registry_->unlink_all();  // no peer maps them any more
  // NCCL kernels waiting for a peer never return by themselves: abort the group (torch's way).
  c10::intrusive_ptr<c10d::Backend> nccl;
  {
    std::lock_guard<std::mutex> lk(nccl_mu_);
    nccl = nccl_;
  }
  if (nccl) {
    try {
      nccl->abort();
    } catch (const std::exception&) {  // already torn down
    }
  }
}

void Communicator::close() {
  if (g_fork_generation.load() != fork_generation_) return;
  {
    std::lock_guard<std::mutex> lk(q_->mu);
    if (closed_.exchange(true)) return;
    q_->stop = true;
    q_->cv.notify_all();
  }
  if (worker_ && worker_->joinable()) {
    if (on_worker()) {
      drain(nullptr);  // close() from a future callback: finish the queue here
    } else {
      worker_->join();
    }
  }
  {
    std::lock_guard<std::mutex> lk(wd_mu_);
    wd_stop_ = true;
    wd_cv_.notify_all();
  }
  if (watchdog_ && watchdog_->joinable()) watchdog_->join();
  // As torch's destroy_process_group does for its groups; the factory holds a Python function.
  c10::intrusive_ptr<c10d::Backend> nccl;
  BackendFactory factory;
  {
    std::lock_guard<std::mutex> lk(nccl_mu_);
    nccl.swap(nccl_);
    factory.swap(make_nccl_);
  }
  if (nccl) {
    try {
      nccl->shutdown();
    } catch (const std::exception&) {  // already failed: nothing left to release cleanly
    }
  }
}

}  // namespace far
