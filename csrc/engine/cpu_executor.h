// The CPU paths: the transports a communicator runs its CPU collectives on (point-to-point over
// its own Gloo backends, shared memory among the ranks of a host) and the code that runs a
// planned Call on them. Every path starts with the header check, over a transport chosen from
// the topology alone, so that two ranks that planned different paths still meet in it and raise
// MismatchError instead of waiting for each other:
//   one host:   the shared-memory slot headers (the first chunk of the shared-memory paths; a
//               header-only chunk before the point-to-point and delegated paths);
//   otherwise:  each rank compares with its left neighbour over point-to-point, then runs
//               hierarchical / ring / halving-doubling, or a gather-family call as one allreduce.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "algorithms/algorithm.h"
#include "algorithms/shm_allreduce.h"
#include "common/header.h"
#include "engine/collective.h"
#include "engine/config.h"
#include "engine/topology.h"
#include "transport/gloo.h"
#include "transport/p2p.h"
#include "transport/shm.h"

namespace far {

class CpuExecutor {
 public:
  using Deadline = std::chrono::steady_clock::time_point;
  // Makes the transports: collective over the ranks of `store`. `poll` is called from every slow
  // wait (it throws to end the op); `tag` names the shared-memory segments.
  CpuExecutor(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, const CommConfig& cfg,
              const Topology& topo, const std::string& tag, const BackendFactory& make_backend,
              std::function<void()> poll);
  CpuExecutor(const CpuExecutor&) = delete;
  CpuExecutor& operator=(const CpuExecutor&) = delete;

  // Runs `c` (its header `h` checked first), giving up at `deadline`.
  void run(const Call& c, const Header& h, Deadline deadline);
  // The header check alone (a call another backend or NCCL runs).
  void check_header_only(const Header& h, Deadline deadline);

  // The local group's shared memory (null without local peers).
  ShmGroup* shm() const { return shm_.get(); }
  const ShmStats& shm_stats() const { return stats_; }
  // What faults do to the transports: wake their waits, undo that, mark shared memory aborted,
  // keep the staging buffers alive forever (an abandoned receive may still land in them).
  void interrupt();
  void clear_interrupt();
  void mark_shm_aborted();
  void leak_buffers();
  // An abandoned cross-host allreduce (Gloo's, no abort) may write into shared memory until its
  // own timeout ends it; its group waits for it, so it goes before the shared memory does.
  void drop_cross();

 private:
  void run_allreduce(const Call& c, const Header& h, Deadline deadline, bool header_checked);
  void run_gather_family(const Call& c, const Header& h, Deadline deadline);
  void run_fallback(const Call& c, const Header& h, Deadline deadline);
  void check_header(P2P& t, const Header& mine);
  ShmContext shm_context(const Header& h, Deadline deadline);
  ShmOptions shm_options() const;

  const int rank_, size_;
  const CommConfig cfg_;
  const Topology topo_;
  const std::function<void()> poll_;
  c10::intrusive_ptr<c10d::Backend> pg_, cross_pg_;
  std::unique_ptr<P2P> p2p_, cross_;
  std::unique_ptr<ShmGroup> shm_;
  ShmStats stats_;
  Staging staging_, hdr_staging_;
};

}  // namespace far
