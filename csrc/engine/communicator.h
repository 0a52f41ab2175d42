// The engine: one Communicator per group of ranks, and the only front door of every collective.
// It is a facade over parts that each own their state:
//   planner.h         validation, eligibility and the path of every call (identical on every rank)
//   op_queue.h        the FIFO: issue order, the worker thread, the caller's-thread fast path
//   fault_monitor.h   deadline, watchdog, the store's fault records: a fault is an error on every rank
//   cpu_executor.h    the CPU transports and paths; nccl_executor.h: CUDA tensors on NCCL
//   buffer_registry.h registered buffers, read in place by the shared-memory paths
// The header of every call is compared across ranks before any data moves.
#pragma once
#include <ATen/core/ivalue.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "algorithms/algorithm.h"
#include "common/errors.h"
#include "engine/buffer_registry.h"
#include "engine/collective.h"
#include "engine/config.h"
#include "engine/cpu_executor.h"
#include "engine/fault_monitor.h"
#include "engine/nccl_executor.h"
#include "engine/op_queue.h"
#include "engine/op_stats.h"
#include "engine/planner.h"
#include "engine/topology.h"
#include "transport/gloo.h"

namespace far {

struct CommOptions {
  ConfigOverrides config;
  std::optional<std::string> host_id;  // replaces this process's host identity (simulated hosts)
  std::string name = "fastallreduce";  // logs and shared-memory segment names
  BackendFactory make_backend;         // the point-to-point transport's Gloo backends
  // The NCCL group of CUDA tensors, made at the first CUDA call (unset: CUDA tensors raise
  // NotImplementedError). Construction never touches it, so a CUDA build without a GPU works.
  BackendFactory make_nccl;
};

class Communicator {
 public:
  using FuturePtr = OpQueue::FuturePtr;

  // Collective over the `size` ranks that share `store` (private to this communicator: a
  // PrefixStore). Agrees on the configuration, discovers the topology, creates its own Gloo
  // backends and shared memory. Throws ArgError (ValueError) on every rank when any rank's
  // configuration is invalid.
  Communicator(c10::intrusive_ptr<c10d::Store> store, int rank, int size, CommOptions opts);
  ~Communicator();
  // The deleter owners use: in a forked child the object is left alone (its mutexes and
  // condition variables have waiters in the parent, whose threads do not exist here).
  static void dispose(Communicator* c);
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const Topology& topology() const { return topo_; }
  const CommConfig& config() const { return cfg_; }

  // -- the front door ------------------------------------------------------------------
  // Validates `c` (ArgError before anything moves; the rejection is published so that peers in
  // the same call raise promptly), then runs it. Blocks until done; returns the result tensor.
  at::Tensor run(const Collective& c);
  // The same, returning at once; the future completes with the result tensor or the error.
  FuturePtr run_async(const Collective& c);
  // For a collective another backend runs: compares `d`'s header across ranks in FIFO order,
  // returning once every rank made the same call (MismatchError otherwise).
  void check_delegated(const Delegated& d);
  // Rejects a call this rank will not make (an adapter's own argument check): takes the call's
  // sequence number, publishes why so that peers making the call raise at once, throws `e`.
  [[noreturn]] void reject(const ArgError& e);

  // -- the planner's answers (identical on every rank) ----------------------------------
  // The algorithm `auto` resolves to for this many bytes.
  Algo choose(size_t bytes) const { return planner_->choose(bytes); }
  // Whether an explicitly requested algorithm can run on this topology.
  bool supports(Algo a) const { return planner_->supports(a); }
  // Whether the engine runs a collective of `kind` on `t` with `op` (nullopt: a reduction the
  // kernels have no arithmetic for); what it does not take, an adapter delegates.
  bool takes(Kind kind, const at::Tensor& t, std::optional<RedOp> op) const { return planner_->takes(kind, t, op); }
  // Whether every rank shares this host's memory (the shared-memory paths of every kind).
  bool single_host() const { return planner_->single_host(); }

  // The NCCL group over these ranks, made at its first use: collective, so called only at a CUDA
  // call every rank makes (after its header check). NotImplementedError without a factory.
  c10::intrusive_ptr<c10d::Backend> nccl() { return nccl_->group(); }
  bool nccl_made() const { return nccl_->made(); }

  // -- registered buffers (buffer_registry.h) ------------------------------------------
  // A tensor whose memory every local rank's shared-memory collectives read in place (an
  // ordinary tensor where there are no local peers or the registration table is full). Not a
  // collective; the memory lives as long as the tensor, also past the communicator.
  at::Tensor empty(at::IntArrayRef sizes, at::ScalarType dtype);
  // Moves the storage of CPU tensor `t` (every tensor and view sharing it follows) into a new
  // registration, contents included; false, changing nothing, where it cannot. Call it only
  // while no other thread uses the storage.
  bool register_storage(const at::Tensor& t);
  bool is_registered(const at::Tensor& t) const { return registry_->is_registered(t); }
  struct Stats {
    uint64_t bytes_copied_in, copying_calls, zero_copy_calls, registrations;
  };
  Stats stats() const;

  // Totals over the calls made with Collective::account (the DDP hook's per-step statistics).
  OpStats::Totals accounted() const { return accounted_.totals(); }

  Algo last_algorithm() const { return static_cast<Algo>(last_algo_.load()); }
  uint64_t ops_completed() const { return completed_.load(); }

  // Waits for queued work (each op still bounded by the timeout), then stops the threads.
  void close();
  // Fails queued and running work at once, on this rank and (through the store) on every rank.
  void abort(const std::string& reason);
  bool aborted() const { return monitor_->aborted(); }
  std::string abort_reason() const { return monitor_->abort_reason(); }
  // Throws ClosedError when used after close(), after an abort, or in a forked child.
  void check_usable() const;
  // Whether this process is a fork of the one that made the communicator.
  bool forked() const;

 private:
  // check_usable + prepare; a rejected call is published (reject) and rethrown.
  Call admit(const Collective& c);
  FuturePtr submit(Call call, bool sync);
  // One op on its executor, its header check included; returns its error, the same on every rank.
  std::exception_ptr execute(OpQueue::Task& task);
  void announce(const Header& h);

  c10::intrusive_ptr<c10d::Store> store_;
  const int rank_, size_;
  const std::string name_;
  const uint64_t fork_generation_;
  CommConfig cfg_;
  Topology topo_;
  // The parts, made in this order (and destroyed in reverse).
  std::unique_ptr<FaultMonitor> monitor_;
  std::unique_ptr<CpuExecutor> cpu_;
  std::unique_ptr<BufferRegistry> registry_;
  std::unique_ptr<NcclExecutor> nccl_;
  std::unique_ptr<Planner> planner_;
  std::atomic<int> last_algo_{0};
  std::atomic<uint64_t> completed_{0};
  OpStats accounted_;
  std::unique_ptr<OpQueue> queue_;  // last: its worker runs execute() on everything above
};

}  // namespace far
