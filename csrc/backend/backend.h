// fastallreduce as a torch.distributed backend: a c10d::Backend whose collectives enter the
// engine's front door. Allreduce (and, with every rank on one host, broadcast, allgather and
// reduce_scatter) of tensors the engine takes run on it; every other collective is delegated to
// a Gloo backend built on the same store (CUDA tensors: to the engine's NCCL group), after the
// engine has checked its header across ranks, so that a call one rank delegates and another
// runs on the engine is a MismatchError on both.
#pragma once
#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "backend/work.h"
#include "common/torch_compat.h"
#include "engine/communicator.h"

namespace far {

class FastAllreduceBackend : public c10d::Backend {
 public:
  // Collective over the `size` ranks of `store` (private to the group): makes the engine (its
  // own Gloo backend and store prefix) and the Gloo backend the other calls are delegated to.
  // `algo`: the engine algorithm of every allreduce (kAuto: the cost model), agreed across ranks.
  FastAllreduceBackend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                       std::chrono::milliseconds timeout, Algo algo, const BackendFactory& make_backend,
                       const std::string& local_error = "", BackendFactory make_nccl = {});
  ~FastAllreduceBackend() override;

  const std::string getBackendName() const override { return "fastallreduce"; }
  c10::intrusive_ptr<Options> getBackendOptions() override { return options_; }
  void setTimeout(std::chrono::milliseconds timeout) override;

  const std::shared_ptr<Communicator>& engine() const { return engine_; }
  uint64_t engine_ops() const { return engine_ops_.load(); }
  uint64_t delegated_ops() const { return delegated_ops_.load(); }
  const c10::intrusive_ptr<c10d::Backend>& delegate() const { return gloo_; }

  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors,
                                           const c10d::AllreduceOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions& opts) override;

  // -- on the engine where it takes them, else delegated to Gloo after the header check --
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors,
                                           const c10d::BroadcastOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allreduce_sparse(std::vector<at::Tensor>& tensors,
                                                  const c10d::AllreduceOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allreduce_coalesced(std::vector<at::Tensor>& tensors,
                                                     const c10d::AllreduceCoalescedOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> reduce(std::vector<at::Tensor>& tensors, const c10d::ReduceOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& outputs,
                                           std::vector<at::Tensor>& inputs,
                                           const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> _allgather_base(at::Tensor& output, at::Tensor& input,
                                                 const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allgather_coalesced(std::vector<std::vector<at::Tensor>>& outputs,
                                                     std::vector<at::Tensor>& inputs,
                                                     const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allgather_into_tensor_coalesced(std::vector<at::Tensor>& outputs,
                                                                 std::vector<at::Tensor>& inputs,
                                                                 const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> gather(std::vector<std::vector<at::Tensor>>& outputs,
                                        std::vector<at::Tensor>& inputs, const c10d::GatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> scatter(std::vector<at::Tensor>& outputs,
                                         std::vector<std::vector<at::Tensor>>& inputs,
                                         const c10d::ScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter(std::vector<at::Tensor>& outputs,
                                                std::vector<std::vector<at::Tensor>>& inputs,
                                                const c10d::ReduceScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(at::Tensor& output, at::Tensor& input,
                                                      const c10d::ReduceScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter_tensor_coalesced(std::vector<at::Tensor>& outputs,
                                                                 std::vector<at::Tensor>& inputs,
                                                                 const c10d::ReduceScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& output, at::Tensor& input,
                                               std::vector<int64_t>& output_splits,
                                               std::vector<int64_t>& input_splits,
                                               const c10d::AllToAllOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> alltoall(std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs,
                                          const c10d::AllToAllOptions& opts) override;
  // The names torch 2.14 gave the tensor-in/tensor-out collectives (older torch calls the
  // underscored names above, which run the same code).
#if FAR_TORCH_SINGLE_NAMES
  c10::intrusive_ptr<c10d::Work> all_gather_single(at::Tensor& output, at::Tensor& input,
                                                   const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> all_gather_single_coalesced(std::vector<at::Tensor>& outputs,
                                                             std::vector<at::Tensor>& inputs,
                                                             const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> gather_single(at::Tensor& output, at::Tensor& input,
                                               const c10d::GatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> gather_into_tensor(at::Tensor& output, at::Tensor& input,
                                                    const c10d::GatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter_single(at::Tensor& output, at::Tensor& input,
                                                       const c10d::ReduceScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter_single_coalesced(std::vector<at::Tensor>& outputs,
                                                                 std::vector<at::Tensor>& inputs,
                                                                 const c10d::ReduceScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> all_to_all_single(at::Tensor& output, at::Tensor& input,
                                                   std::vector<int64_t>& output_splits,
                                                   std::vector<int64_t>& input_splits,
                                                   const c10d::AllToAllOptions& opts) override;
#endif
  void monitoredBarrier(const c10d::BarrierOptions& opts, bool wait_all_ranks) override;
  uint64_t getSequenceNumberForGroup() override;
  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& tensors, int dst, int tag) override;
  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& tensors, int src, int tag) override;
  c10::intrusive_ptr<c10d::Work> recvAnysource(std::vector<at::Tensor>& tensors, int tag) override;
  void enableCollectivesTiming() override;

  // Stops the engine after its queued work (bounded by the timeout) and drops the Gloo backend.
  void shutdown() override;
  void abort() override;

 private:
  // Runs `c` on the engine. sync: the caller waits at once (async_op=False), so the op may run
  // on its thread. `outputs` are what the Work and its Future hold; `finish` (may be empty)
  // runs after the op and before the Work completes (copies out of a staging tensor).
  c10::intrusive_ptr<c10d::Work> engine_run(Collective c, c10d::OpType type, const char* title, bool sync,
                                            std::vector<at::Tensor> outputs, std::function<void()> finish = {},
                                            bool count = true);
  // Whether the engine takes a collective of `kind` on `t` with `op`: its planner decides.
  bool engine_takes(Kind kind, const at::Tensor& t, const c10d::ReduceOp& op) const;
  using Delegate = std::function<c10::intrusive_ptr<c10d::Work>(c10d::Backend&)>;
  // Checks `d` across ranks on the engine, then runs `fn` on backend_for(d.device).
  c10::intrusive_ptr<c10d::Work> run_delegated(const Delegated& d, const Delegate& fn);
  // Gloo for CPU tensors; the engine's NCCL group (made at the first CUDA call) for CUDA ones.
  c10d::Backend& backend_for(c10::DeviceType device);
  c10d::Backend& p2p_backend(const std::vector<at::Tensor>& tensors);
  // The engine paths of the allgather / reduce_scatter entry points; null when not eligible.
  c10::intrusive_ptr<c10d::Work> engine_allgather(at::Tensor& output, at::Tensor& input, c10d::OpType type,
                                                  bool sync);
  c10::intrusive_ptr<c10d::Work> engine_reduce_scatter(at::Tensor& output, at::Tensor& input, c10d::OpType type,
                                                       const c10d::ReduceScatterOptions& opts);
  // Remembers a delegated Work so that barrier() can wait for it (as Gloo's own barrier does).
  c10::intrusive_ptr<c10d::Work> track(c10::intrusive_ptr<c10d::Work> work);
  // Waits for every delegated Work this rank issued that is still running; their errors stay
  // with their own Work.
  void wait_delegated();

  std::shared_ptr<Communicator> engine_;
  c10::intrusive_ptr<c10d::Backend> gloo_;
  c10::intrusive_ptr<Options> options_;
  std::atomic<uint64_t> engine_ops_{0}, delegated_ops_{0};
  std::mutex pending_mu_;
  std::vector<c10::weak_intrusive_ptr<c10d::Work>> pending_;
};

// The body of an entry point the engine does not run: its header (logical kind, op, root,
// dtype, count) is checked across ranks on the engine first, then the delegate runs CALL on `b`.
#define FAR_DELEGATE(KIND, OP, ROOT, DTYPE, COUNT, DEVICE, CALL) \
  return run_delegated(Delegated{KIND, OP, ROOT, DTYPE, COUNT, DEVICE}, [&](c10d::Backend& b) { return CALL; })

}  // namespace far
