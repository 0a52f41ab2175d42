// The engine: one Communicator per process group. Runs collectives in issue order (FIFO), a
// synchronous call on the caller's thread when nothing is queued, asynchronous ones on a worker
// thread; enforces the timeout and turns any fault into an abort seen by every rank.
#pragma once
#include <ATen/core/ivalue.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "algorithms/algorithm.h"
#include "algorithms/shm_allreduce.h"
#include "transport/shm.h"
#include "engine/header.h"

namespace far {

// Maps a torch dtype to the kernels' dtype; throws std::invalid_argument for others.
DType to_dtype(at::ScalarType t);

struct CommConfig {
  int64_t timeout_ms = 30 * 60 * 1000;
  AlgoOptions algo;
  CostModel cost;
  ShmOptions shm;
  size_t shm_slot_bytes = 4 << 20;
  std::string name = "fastallreduce";
  // Run the async worker under SCHED_IDLE: it takes only CPU time the process's compute threads
  // leave (see worker_loop).
  bool worker_idle = true;
};

// Which ranks share this host, learned by the Python layer from exchanged host identities.
struct Topology {
  int local_rank = 0;
  ShmPeers local;      // group ranks and pids of the ranks on this host (local rank order)
  int num_hosts = 1;
  bool uniform = true;  // same number of ranks on every host
  c10::intrusive_ptr<c10d::Backend> cross;  // same local index on every host (may be null)
};

struct Call {
  at::Tensor input;   // contiguous, validated by the bindings
  at::Tensor output;  // same as input for in-place; allgather: size x input; reduce_scatter: input / size
  RedOp op = RedOp::kSum;
  Algo algo = Algo::kAuto;
  Kind kind = Kind::kAllreduce;
  int root = 0;  // broadcast
};

class Communicator {
 public:
  // `pg` carries only this communicator's traffic; `store` is private to it (a PrefixStore).
  Communicator(c10::intrusive_ptr<c10d::Backend> pg, c10::intrusive_ptr<c10d::Store> store,
               CommConfig cfg, Topology topo);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  // Blocks until done (on this thread if nothing is queued). Throws CommError and subclasses.
  void run(Call call);
  // Returns at once; the future completes with call.output or with the error.
  c10::intrusive_ptr<c10::ivalue::Future> run_async(Call call);

  // The algorithm `auto` resolves to for this many bytes (identical on every rank).
  Algo choose(size_t bytes) const;
  // Whether an explicitly requested algorithm can run on this topology.
  bool supports(Algo a) const;
  // Whether allgather, reduce_scatter and broadcast can run (shared memory: every rank on one host).
  bool supports_gather_family() const { return size_ == 1 || (shm_ && static_cast<int>(topo_.local.pids.size()) == size_); }
  Algo last_algorithm() const { return static_cast<Algo>(last_algo_.load()); }
  uint64_t ops_completed() const { return completed_.load(); }

  // Waits for queued work (each op still bounded by the timeout), then stops the worker.
  void close();
  // Fails queued and running work at once, on this rank and (through the store) on every rank.
  void abort(const std::string& reason);
  bool aborted() const { return aborted_.load(); }
  std::string abort_reason() const;

 private:
  struct Task {
    Call call;
    uint64_t seq;
    c10::intrusive_ptr<c10::ivalue::Future> fut;
  };
  void execute(Task& task);
  void run_algorithm(const Call& call, const Header& h);
  void run_gather_family(const Call& call, const Header& h);
  // Records the algorithm an op runs with (last_algorithm, the watchdog's report, the debug
  // log) and returns the header that goes on the wire.
  Header announce(const Header& h, Algo algo);
  ShmOptions shm_options() const;  // the configured options, with the kernel threads
  void check_header(P2P& t, const Header& mine);
  Algo choose_flat(size_t bytes) const;
  void poll();  // called from slow waits: deadline, local and remote abort
  [[noreturn]] void fail_timeout();
  // Records the abort for every rank; returns the record that won (the first failure).
  std::string publish_abort(const std::string& record);
  std::string missing_ranks_report();
  void worker_loop();
  void watchdog_loop();
  void interrupt_transports();
  void fail_pending(const std::string& why);

  c10::intrusive_ptr<c10d::Backend> pg_;
  c10::intrusive_ptr<c10d::Store> store_;
  CommConfig cfg_;
  int rank_, size_;
  std::unique_ptr<P2P> p2p_, cross_;
  std::unique_ptr<ShmGroup> shm_;
  Topology topo_;
  Staging staging_, hdr_staging_;

  // Op in progress (only one runs at a time).
  Header cur_;
  std::chrono::steady_clock::time_point deadline_;
  std::atomic<int64_t> deadline_ns_{0};
  std::atomic<bool> in_op_{false};

  // Watchdog: while an op runs it polls the store for a peer's abort and watches the deadline;
  // when either fires it records why and interrupts the blocked transport wait.
  std::thread watchdog_;
  std::mutex wd_mu_;
  std::condition_variable wd_cv_;
  bool wd_stop_ = false;
  std::atomic<int> fired_{0};  // 0 no, 1 deadline, 2 peer abort in store, 3 store lost
  std::string fired_record_;   // written before fired_ is set

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  bool busy_ = false, stop_ = false;
  uint64_t next_seq_ = 0;
  std::thread worker_;

  std::atomic<bool> aborted_{false}, closed_{false};
  mutable std::mutex reason_mu_;
  std::string reason_;
  std::atomic<int> last_algo_{0};
  std::atomic<uint64_t> completed_{0};
};

}  // namespace far
