// The planner: every decision about a call that must come out the same on every rank. It
// validates a call (an ArgError before anything moves), decides whether the engine takes it at
// all, and chooses its path and algorithm from what every rank shares (kind, dtype, op, count,
// root, device, topology, the agreed cost model) -- never from contiguity: a tensor the kernels
// cannot take as it is gets staged. Its output is a Call: the plan the executors run.
#pragma once
#include <ATen/ATen.h>

#include <cstddef>
#include <optional>

#include "common/types.h"
#include "engine/buffer_registry.h"
#include "engine/collective.h"
#include "engine/config.h"
#include "engine/topology.h"

namespace far {

class Planner {
 public:
  // What the communicator builds for a topology: shared memory among the ranks of a host, and a
  // cross-host group (one per local index) where every host has the same number of ranks.
  static bool wants_shm(const Topology& t) { return t.local.group_ranks.size() > 1; }
  static bool wants_cross(const Topology& t) { return t.num_hosts > 1 && t.uniform && wants_shm(t); }
  // Whether every rank shares this host's memory (the shared-memory paths of every kind).
  static bool single_host(int size, const Topology& t) { return size == 1 || (wants_shm(t) && t.num_hosts == 1); }
  // Whether path `a` runs in shared memory.
  static bool on_shm(Algo a) { return a == Algo::kShm || a == Algo::kHierarchical; }

  // `slot_bytes`: the shared-memory slot (0 without shared memory); `cuda_ok`: whether CUDA
  // tensors have a path (an NCCL group factory); `registry`: where in-place inputs may be
  // registered (null: nowhere).
  Planner(int rank, int size, const CommConfig& cfg, const Topology& topo, size_t slot_bytes, bool cuda_ok,
          const BufferRegistry* registry);

  // Validates `c` and plans it. Throws ArgError before anything is sent.
  Call prepare(const Collective& c) const;
  // The plan of a call another backend runs: its header check alone.
  static Call delegated(const Delegated& d);
  // Whether the engine runs a collective of `kind` on `t` (the torch backend delegates the rest):
  // a CPU tensor of a dtype the kernels have, with a reduction they have arithmetic for (`op`
  // nullopt: one they have not); gathers and broadcasts only where every rank shares memory.
  bool takes(Kind kind, const at::Tensor& t, std::optional<RedOp> op) const;
  // The algorithm `auto` resolves to for this many bytes.
  Algo choose(size_t bytes) const;
  // Whether an explicitly requested algorithm can run on this topology.
  bool supports(Algo a) const;
  bool single_host() const { return single_host(size_, topo_); }

 private:
  Algo choose_flat(size_t bytes) const;
  // The header's registration fields, when `c` reads a registered input in place.
  void mark_registered(Call& c) const;

  const int rank_, size_;
  const CommConfig cfg_;
  const Topology topo_;
  const bool shm_, cross_;
  const size_t slot_bytes_;
  const bool cuda_ok_;
  const BufferRegistry* registry_;
};

}  // namespace far
