#include "engine/cpu_executor.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include "algorithms/hierarchical.h"
#include "algorithms/shm_collectives.h"
#include "common/aten.h"
#include "common/errors.h"
#include "engine/planner.h"

namespace far {
namespace {

c10::intrusive_ptr<c10d::Store> prefixed(const std::string& p, const c10::intrusive_ptr<c10d::Store>& s) {
  return c10::make_intrusive<c10d::PrefixStore>(p, s);
}

Job job_of(const at::Tensor& in, const at::Tensor& out, RedOp op, int divisor) {
  Job job;
  job.src = in.data_ptr();
  job.buf = out.data_ptr();
  job.count = static_cast<size_t>(out.numel());
  job.op = op;
  job.divisor = divisor;
  job.dtype = *to_dtype(out.scalar_type());
  return job;
}

}  // namespace

CpuExecutor::CpuExecutor(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, const CommConfig& cfg,
                         const Topology& topo, const std::string& tag, const BackendFactory& make_backend,
                         std::function<void()> poll)
    : rank_(rank), size_(size), cfg_(cfg), topo_(topo), poll_(std::move(poll)) {
  const auto timeout = std::chrono::milliseconds(cfg_.timeout_ms);
  // Gloo closes every connection when one of its own waits times out: give it more time than
  // ours, so that the communicator's deadline (which reports the missing ranks) fires first.
  const auto transport_timeout = timeout * 2 + std::chrono::seconds(30);
  pg_ = make_backend(prefixed("p2p/", store), rank_, size_, transport_timeout);
  p2p_ = std::make_unique<P2P>(pg_, poll_);
  if (Planner::wants_cross(topo_)) {
    // Cross-host group of the ranks with my local index (one per index, all used at once).
    cross_pg_ = make_backend(prefixed("cross/" + std::to_string(topo_.local_rank) + "/", store), topo_.host,
                             topo_.num_hosts, transport_timeout);
    cross_ = std::make_unique<P2P>(cross_pg_, poll_);
  }
  if (Planner::wants_shm(topo_)) {
    // Across hosts only the hierarchical algorithm uses these segments, a slot per chunk.
    const size_t slot = topo_.num_hosts > 1 ? cfg_.hier_slot_bytes : cfg_.shm_slot_bytes;
    shm_ = std::make_unique<ShmGroup>(topo_.local_rank, topo_.local, store, tag, slot, timeout);
  }
}

void CpuExecutor::interrupt() {
  p2p_->interrupt();
  if (cross_) cross_->interrupt();
}

void CpuExecutor::clear_interrupt() {
  p2p_->clear_interrupt();
  if (cross_) cross_->clear_interrupt();
}

void CpuExecutor::mark_shm_aborted() {
  if (shm_) shm_->mark_aborted();
}

void CpuExecutor::leak_buffers() {
  staging_.leak();
  hdr_staging_.leak();
}

void CpuExecutor::drop_cross() {
  cross_.reset();
  cross_pg_.reset();
}

ShmContext CpuExecutor::shm_context(const Header& h, Deadline deadline) {
  return ShmContext{*shm_, h, deadline, poll_, &stats_};
}

ShmOptions CpuExecutor::shm_options() const {
  ShmOptions so = cfg_.shm;
  so.threads = cfg_.algo.threads;
  return so;
}

void CpuExecutor::run(const Call& c, const Header& h, Deadline deadline) {
  if (size_ == 1) {  // nothing to agree on: every collective is a copy (or nothing)
    if (c.algo != Algo::kDelegate && !c.out.is_same(c.in) && c.in.numel() > 0)
      std::memcpy(c.out.data_ptr(), c.in.data_ptr(), std::min(c.in.nbytes(), c.out.nbytes()));
    return;
  }
  if (Planner::single_host(size_, topo_)) {
    const bool shm_path = Planner::on_shm(c.algo);
    if (!shm_path) check_header_only(h, deadline);
    if (c.algo == Algo::kDelegate) return;
    if (c.kind != Kind::kAllreduce) return run_gather_family(c, h, deadline);
    return run_allreduce(c, h, deadline, /*header_checked=*/!shm_path);
  }
  check_header(*p2p_, h);
  if (c.algo == Algo::kDelegate) return;
  if (c.kind != Kind::kAllreduce) return run_fallback(c, h, deadline);
  run_allreduce(c, h, deadline, /*header_checked=*/true);
}

void CpuExecutor::run_allreduce(const Call& c, const Header& h, Deadline deadline, bool header_checked) {
  const bool shm_path = Planner::on_shm(c.algo);
  if (!shm_path && !c.out.is_same(c.in) && c.in.numel() > 0)
    std::memcpy(c.out.data_ptr(), c.in.data_ptr(), c.in.nbytes());
  Job job = job_of(c.in, c.out, c.op, size_);
  if (shm_path) {
    ShmContext ctx = shm_context(h, deadline);
    if (c.algo == Algo::kShm)
      shm_allreduce(ctx, job, shm_options());
    else
      hierarchical_allreduce(ctx, *cross_, job, shm_options(), cfg_.algo, cfg_.cost, staging_);
    return;
  }
  if (!header_checked) check_header(*p2p_, h);
  if (job.op == RedOp::kAvg && is_16bit_float(job.dtype)) {
    // The point-to-point paths round at every hop: divide first, so that a 16-bit average never
    // overflows where the average itself fits (as torch's compression hooks do).
    scale_div(job.buf, job.count, job.dtype, job.divisor, cfg_.algo.threads);
    job.op = RedOp::kSum;
  }
  switch (c.algo) {
    case Algo::kRing: ring_allreduce(*p2p_, job, cfg_.algo, staging_); break;
    case Algo::kHalvingDoubling: halving_doubling_allreduce(*p2p_, job, cfg_.algo, staging_); break;
    default: throw std::logic_error(std::string("fastallreduce: no allreduce path ") + algo_name(c.algo));
  }
}

void CpuExecutor::run_gather_family(const Call& c, const Header& h, Deadline deadline) {
  FamilyJob job;
  job.kind = c.kind;
  job.in = static_cast<const char*>(c.in.data_ptr());
  job.out = static_cast<char*>(c.out.data_ptr());
  job.count = h.count;
  job.dtype = *to_dtype(c.in.scalar_type());
  job.op = c.op;
  job.divisor = size_;
  const auto& locals = topo_.local.group_ranks;
  job.root = static_cast<int>(std::find(locals.begin(), locals.end(), c.root) - locals.begin());
  ShmContext ctx = shm_context(h, deadline);
  shm_gather_family(ctx, job, shm_options());
}

void CpuExecutor::run_fallback(const Call& c, const Header& h, Deadline deadline) {
  // Across hosts a gather-family call runs as one allreduce on the engine, after the header
  // check of the logical call: bytes summed into zeros are an exact copy.
  Call inner;
  inner.kind = Kind::kAllreduce;
  const int64_t nbytes = c.in.numel() * c.in.element_size();
  switch (c.kind) {
    case Kind::kBroadcast:
      inner.out = rank_ == c.root ? c.in.reshape({-1}).view(at::kByte).clone()
                                  : at::zeros({nbytes}, c.in.options().dtype(at::kByte));
      break;
    case Kind::kAllgather:
      inner.out = at::zeros({nbytes * size_}, c.in.options().dtype(at::kByte));
      inner.out.narrow(0, rank_ * nbytes, nbytes).copy_(c.in.reshape({-1}).view(at::kByte));
      break;
    case Kind::kReduceScatter:
      inner.out = c.in.reshape({-1}).clone();
      inner.op = c.op;
      break;
    default: throw std::logic_error("fastallreduce: no fallback for this kind");
  }
  inner.in = inner.out;
  inner.algo = c.inner_algo;  // planned for these bytes
  Header ih = h;
  ih.algo = static_cast<uint8_t>(inner.algo);
  run_allreduce(inner, ih, deadline, /*header_checked=*/true);
  switch (c.kind) {
    case Kind::kBroadcast: c.out.reshape({-1}).view(at::kByte).copy_(inner.out); break;
    case Kind::kAllgather: c.out.reshape({-1}).view(at::kByte).copy_(inner.out); break;
    default: c.out.reshape({-1}).copy_(inner.out.narrow(0, rank_ * c.out.numel(), c.out.numel())); break;
  }
}

void CpuExecutor::check_header_only(const Header& h, Deadline deadline) {
  if (Planner::single_host(size_, topo_)) {
    ShmContext ctx = shm_context(h, deadline);
    shm_header_only(ctx);
  } else {
    check_header(*p2p_, h);
  }
}

void CpuExecutor::check_header(P2P& t, const Header& mine) {
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
       << (mine.magic == theirs.magic ? mine.describe() : "?") << " but rank " << theirs.rank << " called "
       << theirs.describe();
    throw MismatchError(os.str());
  }
}

}  // namespace far
