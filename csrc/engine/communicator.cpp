// The facade: construction and teardown of the parts, fork safety, the front door, and the one
// op that ties them together (execute).
#include "engine/communicator.h"

#include <pthread.h>

#include <ATen/record_function.h>

#include <array>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/errors.h"
#include "common/knobs.h"
#include "transport/shm_segment.h"

namespace far {
namespace {

// Bumped in every forked child: a communicator made before the fork knows it is in a child
// from one atomic load (getpid() is a system call on every collective otherwise).
std::atomic<uint64_t> g_fork_generation{0};
const bool g_atfork_installed = [] {
  pthread_atfork(nullptr, nullptr, [] { g_fork_generation.fetch_add(1); });
  return true;
}();

// The torch.profiler event of each collective: "fastallreduce::" + its kind's name.
const char* record_name(Kind k) {
  static const std::array<std::string, kNumKinds> names = [] {
    std::array<std::string, kNumKinds> a;
    for (int i = 0; i < kNumKinds; ++i) a[i] = std::string("fastallreduce::") + kind_name(static_cast<Kind>(i));
    return a;
  }();
  return names[static_cast<int>(k)].c_str();
}

bool debug_log() {
  static const bool on = [] {
    const char* v = std::getenv(knobs::LOG);
    return v && (std::strcmp(v, "debug") == 0 || std::strcmp(v, "DEBUG") == 0);
  }();
  return on;
}

// Segment names carry the communicator's name; '/' is not allowed inside a POSIX shm name.
std::string segment_tag(std::string name) {
  for (auto& ch : name)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return name.substr(0, 40);
}

}  // namespace

Communicator::Communicator(c10::intrusive_ptr<c10d::Store> store, int rank, int size, CommOptions opts)
    : store_(std::move(store)), rank_(rank), size_(size), name_(opts.name), fork_generation_(g_fork_generation.load()) {
  (void)g_atfork_installed;
  if (!opts.make_backend) throw value_error("fastallreduce: no transport backend factory");
  if (size_ < 1 || rank_ < 0 || rank_ >= size_)
    throw value_error("fastallreduce: rank " + std::to_string(rank_) + " of " + std::to_string(size_) + " is invalid");
  // Validation runs before the first store wait, so a bad local value never waits out a timeout.
  const auto wait = std::chrono::milliseconds(opts.config.timeout_ms.value_or(cfg_.timeout_ms));
  cfg_ = agree_config(*store_, rank_, size_, opts.config, std::min(wait, std::chrono::milliseconds(kMaxTimeoutMs)));
  topo_ = discover_topology(*store_, rank_, size_, opts.host_id, std::chrono::milliseconds(cfg_.timeout_ms));
  cfg_.algo.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) /
                                      static_cast<int>(topo_.local.group_ranks.size()));
  // A fault reaches the transports through these (they exist by the time any fault can fire).
  FaultMonitor::Hooks hooks;
  hooks.interrupt = [this] { cpu_->interrupt(); };
  hooks.clear_interrupt = [this] { cpu_->clear_interrupt(); };
  hooks.leak_buffers = [this] { cpu_->leak_buffers(); };
  hooks.mark_shm_aborted = [this] { cpu_->mark_shm_aborted(); };
  monitor_ = std::make_unique<FaultMonitor>(store_, rank_, size_, cfg_.timeout_ms, topo_.host_of_rank, topo_.host,
                                            std::move(hooks));
  const std::string tag = segment_tag(name_);
  cpu_ = std::make_unique<CpuExecutor>(store_, rank_, size_, cfg_, topo_, tag, opts.make_backend,
                                       [this] { monitor_->poll(); });
  opts.make_backend = nullptr;  // the factory may hold interpreter objects: drop it now
  registry_ = std::make_unique<BufferRegistry>(cpu_->shm(), tag);
  // The NCCL factory is kept until the first CUDA call or close().
  nccl_ = std::make_unique<NcclExecutor>(store_, rank_, size_, cfg_.timeout_ms, std::move(opts.make_nccl),
                                         [this] { return queue_->closed(); });
  planner_ = std::make_unique<Planner>(rank_, size_, cfg_, topo_, cpu_->shm() ? cpu_->shm()->slot_bytes() : 0,
                                       nccl_->cuda_ok(), registry_.get());
  queue_ = std::make_unique<OpQueue>([this](OpQueue::Task& t) { return execute(t); }, cfg_.worker_idle);
  monitor_->start();
}

void Communicator::dispose(Communicator* c) {
  if (c && !c->forked()) delete c;
}

Communicator::~Communicator() {
  if (forked()) {
    // A forked child's copy: the threads do not exist here and the transports are the parent's.
    // Touch nothing the parent owns (the NCCL factory holds a Python object); let the memory go
    // with the child.
    (void)queue_.release();
    (void)nccl_.release();
    (void)registry_.release();
    (void)cpu_.release();
    (void)monitor_.release();
    (void)store_.release();
    return;
  }
  if (queue_->pending() && !queue_->closed()) {
    // Destroyed with work outstanding: abandon it here and tell every peer, so that nobody
    // waits for these collectives until the timeout.
    monitor_->publish(Fault{FaultKind::kAborted, rank_, Fault::kNoSeq,
                            "fastallreduce: rank " + std::to_string(rank_) +
                                " destroyed its communicator while collectives were pending"});
    cpu_->interrupt();
  }
  close();
  cpu_->drop_cross();
  registry_->detach();  // before the shared memory goes: registered tensors may live on
}

bool Communicator::forked() const { return g_fork_generation.load(std::memory_order_relaxed) != fork_generation_; }

void Communicator::check_usable() const {
  if (forked())
    throw ClosedError("fastallreduce: this communicator was created in another process and cannot be used in a "
                      "forked child; create a new one in the child");
  if (queue_->closed()) throw ClosedError("fastallreduce: communicator is closed");
  if (aborted()) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
}

at::Tensor Communicator::empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  check_usable();
  return registry_->empty(sizes, dtype);
}

bool Communicator::register_storage(const at::Tensor& t) {
  check_usable();
  return registry_->register_storage(t);
}

Communicator::Stats Communicator::stats() const {
  const ShmStats& s = cpu_->shm_stats();
  return Stats{s.bytes_copied_in.load(), s.copying_calls.load(), s.zero_copy_calls.load(), registry_->count()};
}

// ---- the front door -------------------------------------------------------------------------

Call Communicator::admit(const Collective& c) {
  check_usable();
  try {
    return planner_->prepare(c);
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
  submit(planner_->delegated(d), /*sync=*/true);
}

void Communicator::reject(const ArgError& e) {
  // The call takes its sequence number like any other, so every rank stays in step; peers that
  // made the call find the rejection under that number (fault_monitor.cpp) and raise at once.
  monitor_->publish_rejection(queue_->take_seq(), e.what());
  throw e;
}

Communicator::FuturePtr Communicator::submit(Call call, bool sync) {
  if (call.account) call.submitted_ns = OpStats::now_ns();
  return queue_->submit(std::move(call), sync, [this] { check_usable(); });
}

// ---- one op ---------------------------------------------------------------------------------

std::exception_ptr Communicator::execute(OpQueue::Task& task) {
  const Call& c = task.call;
  Header h = c.header;
  h.rank = static_cast<uint32_t>(rank_);
  h.seq = task.seq;
  // A fault (`e`; `own`: the exception as thrown, or null for `e` itself): the communicator is
  // aborted on every rank, and the first failure published is the one reported.
  auto failed = [&](const CommError& e, std::exception_ptr own) -> std::exception_ptr {
    // A peer killed between creating and unlinking a segment (its group's or a registration's)
    // left it in /dev/shm; so may this rank's registrations, which no peer will map now.
    remove_stale_segments();
    registry_->unlink_all();
    return monitor_->settle(e, std::move(own), task.seq);
  };
  try {
    if (aborted()) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
    RECORD_FUNCTION(record_name(c.kind), std::vector<c10::IValue>());
    monitor_->begin_op(h);
    monitor_->clear_report();
    struct End {
      FaultMonitor* monitor;
      ~End() { monitor->end_op(); }
    } end{monitor_.get()};
    if (c.algo == Algo::kNccl) {
      // torch's NCCL watchdog found an earlier op failed or timed out: that is this
      // communicator's fault, on every rank (published like any other).
      if (const auto fault = nccl_->pending_fault()) {
        monitor_->publish(*fault);
        fault->raise();  // a timeout as CommTimeoutError, NCCL's errors as CommError
      }
      announce(h);
      if (size_ > 1) cpu_->check_header_only(h, monitor_->deadline());
      nccl_->run(task, h);  // copies back itself, in stream order
    } else {
      if (c.algo != Algo::kDelegate) announce(h);
      const uint64_t copied_before = cpu_->shm_stats().bytes_copied_in.load();
      cpu_->run(c, h, monitor_->deadline());
      if (c.copy_back.defined()) c.copy_back.detach().copy_(c.out.view(c.copy_back.sizes()));
      // Ops run one at a time: the counter's growth is this op's.
      if (c.account)
        accounted_.record(c.in.nbytes(), c.submitted_ns, OpStats::now_ns(),
                          cpu_->shm_stats().bytes_copied_in.load() - copied_before);
    }
    completed_.fetch_add(1);
    return nullptr;
  } catch (const CommError& e) {
    return failed(e, std::current_exception());
  } catch (const ArgError&) {
    return std::current_exception();
  } catch (const std::exception& e) {
    // Whatever a transport or a library below raised: one of ours, so that every rank sees a
    // CommError and the communicator is aborted everywhere, as for any fault.
    return failed(CommError("fastallreduce: rank " + std::to_string(rank_) + " failed in " + h.describe() + ": " +
                            std::string(e.what()).substr(0, 400)),
                  nullptr);
  } catch (...) {
    return std::current_exception();
  }
}

void Communicator::announce(const Header& h) {
  last_algo_.store(h.algo);
  if (debug_log())
    std::fprintf(stderr, "[fastallreduce %s rank %d] %s\n", name_.c_str(), rank_, h.describe().c_str());
}

// ---- shutdown -------------------------------------------------------------------------------

void Communicator::abort(const std::string& reason) {
  if (forked()) return;
  monitor_->publish(
      Fault{FaultKind::kAborted, rank_, Fault::kNoSeq, "fastallreduce: rank " + std::to_string(rank_) + " aborted: " + reason});
  cpu_->interrupt();
  registry_->unlink_all();  // no peer maps them any more
  nccl_->abort();
}

void Communicator::close() {
  if (forked()) return;
  if (!queue_->close()) return;
  monitor_->stop();
  nccl_->shutdown();  // as torch's destroy_process_group does for its groups
}

}  // namespace far
