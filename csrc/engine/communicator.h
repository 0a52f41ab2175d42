// The engine: one Communicator per group of ranks, and the only front door of every collective.
// run() / run_async() / check_delegated() validate a call, choose its path from properties that
// are identical on every rank, and run it in issue order (FIFO): a synchronous call on the
// caller's thread when nothing is queued, asynchronous ones on a worker thread. The header of
// every call is compared across ranks before any data moves; a fault on one rank is an error on
// every rank (watchdog.cpp); dispatch.cpp runs the paths.
#pragma once
#include <ATen/core/ivalue.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "algorithms/algorithm.h"
#include "algorithms/shm_allreduce.h"
#include "common/errors.h"
#include "engine/bounded_store.h"
#include "engine/collective.h"
#include "engine/config.h"
#include "engine/topology.h"
#include "transport/gloo.h"
#include "transport/shm.h"
#include "transport/shm_registry.h"

namespace far {

// A fault record ("<kind>|<message>", as published in the store) as the exception its kind names:
// mismatch -> MismatchError, timeout -> CommTimeoutError, anything else -> CommError.
[[noreturn]] void throw_fault_record(const std::string& record);

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
  using FuturePtr = c10::intrusive_ptr<c10::ivalue::Future>;

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

  // The algorithm `auto` resolves to for this many bytes (identical on every rank).
  Algo choose(size_t bytes) const;
  // The NCCL group over these ranks, made at its first use: collective, so called only at a CUDA
  // call every rank makes (after its header check). NotImplementedError without a factory.
  c10::intrusive_ptr<c10d::Backend> nccl();
  bool nccl_made() const;

  // -- registered buffers (registered.cpp) ---------------------------------------------
  // A tensor whose memory every local rank's shared-memory collectives read in place (an
  // ordinary tensor where there are no local peers or the registration table is full). Not a
  // collective; the memory lives as long as the tensor, also past the communicator.
  at::Tensor empty(at::IntArrayRef sizes, at::ScalarType dtype);
  // Moves the storage of CPU tensor `t` (every tensor and view sharing it follows) into a new
  // registration, contents included; false, changing nothing, where it cannot. Call it only
  // while no other thread uses the storage.
  bool register_storage(const at::Tensor& t);
  bool is_registered(const at::Tensor& t) const;
  struct Stats {
    uint64_t bytes_copied_in, copying_calls, zero_copy_calls, registrations;
  };
  Stats stats() const;

  // Whether an explicitly requested algorithm can run on this topology.
  bool supports(Algo a) const;
  // Whether every rank shares this host's memory (the shared-memory paths of every kind).
  bool single_host() const { return size_ == 1 || (shm_ && topo_.num_hosts == 1); }
  Algo last_algorithm() const { return static_cast<Algo>(last_algo_.load()); }
  uint64_t ops_completed() const { return completed_.load(); }

  // Waits for queued work (each op still bounded by the timeout), then stops the threads.
  void close();
  // Fails queued and running work at once, on this rank and (through the store) on every rank.
  void abort(const std::string& reason);
  bool aborted() const { return aborted_.load(); }
  std::string abort_reason() const;
  // Throws ClosedError when used after close(), after an abort, or in a forked child.
  void check_usable() const;
  // Whether this process is a fork of the one that made the communicator.
  bool forked() const;
  // Rejects a call this rank will not make (an adapter's own argument check): takes the call's
  // sequence number, publishes why so that peers making the call raise at once, throws `e`.
  [[noreturn]] void reject(const ArgError& e);

 private:
  struct Task {
    Call call;
    uint64_t seq = 0;
    FuturePtr fut;  // null: a synchronous call
    bool sync = false;
    // A CUDA call returning at once: fut completes from this (the NCCL Work's CUDA-aware future).
    FuturePtr after;
  };
  // Queue state the worker thread shares: it outlives the Communicator when the last reference
  // drops inside a future callback on the worker thread itself.
  struct Queue {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Task> tasks;
    bool busy = false, stop = false, gone = false;
  };

  // validate.cpp
  Call prepare(const Collective& c) const;
  // check_usable + prepare; a rejected call is published (reject) and rethrown.
  Call admit(const Collective& c);
  // communicator.cpp: queueing and threads
  FuturePtr submit(Call call, bool sync);
  bool on_worker() const { return std::this_thread::get_id() == worker_id_; }
  // Runs queued tasks on this (the worker) thread until `until` completes (null: until stopped).
  void drain(const FuturePtr& until);
  static void complete(Task& t, std::exception_ptr err);
  void worker_loop(std::shared_ptr<Queue> q);
  // dispatch.cpp: one op, header check included
  std::exception_ptr execute(Task& task);
  void run_call(const Call& c, const Header& h);
  void run_allreduce(const Call& c, const Header& h, bool header_checked);
  void run_gather_family(const Call& c, const Header& h);
  void run_fallback(const Call& c, const Header& h);
  // The header check alone, over the transport the topology picks (shm on one host, else p2p).
  void check_header_only(const Header& h);
  // nccl_path.cpp: CUDA tensors on the NCCL group
  void run_nccl(Task& task, const Header& h);
  void watch_nccl(const c10::intrusive_ptr<c10d::Work>& work, const Header& h);
  void announce(const Header& h);
  ShmOptions shm_options() const;
  // The header's registration fields, when `c` reads a registered input in place.
  void mark_registered(Call& c) const;
  // The shared-memory paths' view of the op in progress (`h` must outlive it).
  ShmContext shm_context(const Header& h);
  static bool on_shm(Algo a);
  void check_header(P2P& t, const Header& mine);
  Algo choose_flat(size_t bytes) const;
  // watchdog.cpp: deadline, abort and rejection protocol
  void begin_op(const Header& h);
  void end_op();
  void poll();  // called from slow waits: deadline, local and remote abort
  [[noreturn]] void fail_timeout();
  std::string publish_abort(const std::string& record);
  std::string missing_ranks_report();  // also kept in report_, for the error execute() returns
  std::string find_missing_ranks();
  static std::string ranks_report(const std::string& what, const std::vector<int>& ranks);  // " [what: 1, 2]"
  void watchdog_loop();
  void interrupt_transports();

  c10::intrusive_ptr<c10d::Store> store_;
  std::unique_ptr<BoundedStore> bounded_store_;  // store_ for the watchdog and the failure path
  int rank_, size_;
  CommOptions opts_;
  CommConfig cfg_;
  Topology topo_;
  c10::intrusive_ptr<c10d::Backend> pg_, cross_pg_;
  std::unique_ptr<P2P> p2p_, cross_;
  std::unique_ptr<ShmGroup> shm_;
  std::shared_ptr<ShmRegistry> registry_;  // with shm_; outlives it in the tensors it registered
  ShmStats shm_stats_;
  // The NCCL group (made lazily) and what its watchdog reported (written from torch's thread).
  // nccl_make_mu_ serialises the making (which takes the GIL); nccl_mu_ guards the members and is
  // never held while the GIL is awaited.
  std::mutex nccl_make_mu_;
  mutable std::mutex nccl_mu_;
  BackendFactory make_nccl_;
  bool cuda_ok_ = false;
  c10::intrusive_ptr<c10d::Backend> nccl_;
  struct NcclFault {
    std::mutex mu;
    std::string record;  // "timeout|message" once an NCCL op failed or timed out
  };
  std::shared_ptr<NcclFault> nccl_fault_ = std::make_shared<NcclFault>();
  std::function<void()> poll_fn_;  // [this] { poll(); }, made once for every slow wait
  Staging staging_, hdr_staging_;
  uint64_t fork_generation_;

  // Op in progress (only one runs at a time). in_op_, op_seq_ and fired_ change under wd_mu_,
  // so that a deadline never fires for an op that has already finished.
  Header cur_;
  std::chrono::steady_clock::time_point deadline_;
  bool in_op_ = false;

  std::unique_ptr<std::thread> watchdog_;
  std::mutex wd_mu_;
  std::condition_variable wd_cv_;
  bool wd_stop_ = false;
  // 0 no, 1 deadline, 2 peer abort in store, 3 store lost, 4 a peer rejected this call
  std::atomic<int> fired_{0};
  std::string fired_record_;  // written before fired_ is set

  std::shared_ptr<Queue> q_;
  uint64_t next_seq_ = 0;  // under q_->mu
  std::unique_ptr<std::thread> worker_;
  std::thread::id worker_id_;

  std::atomic<bool> aborted_{false}, closed_{false};
  mutable std::mutex reason_mu_;
  std::string reason_;
  std::string report_;  // this rank's missing_ranks_report() for the op that failed (op thread only)
  std::atomic<int> last_algo_{0};
  std::atomic<uint64_t> completed_{0};
};

}  // namespace far
