// The front door's checks and the path of every call (planner.h).
#include "engine/planner.h"

#include <algorithm>
#include <optional>
#include <string>

#include <ATen/MemoryOverlap.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "common/aten.h"
#include "common/errors.h"

namespace far {
namespace {

std::string str(const at::Tensor& t) { return c10::toString(t.scalar_type()); }

void check_tensor(const at::Tensor& t, const char* what, bool cuda_ok) {
  if (!t.defined()) throw type_error(std::string("fastallreduce: ") + what + " is not a tensor");
  if (t.layout() != at::kStrided)
    throw type_error(std::string("fastallreduce: sparse / non-strided tensors are not supported (") + what +
                     " has layout " + c10::str(t.layout()) + ")");
  if (t.device().is_cuda() && !cuda_ok)
    throw not_implemented(std::string("fastallreduce: no CUDA path for the ") + what +
                          ": this torch has no NCCL (torch.distributed.is_nccl_available() is False)");
  if (!t.device().is_cpu() && !t.device().is_cuda())
    throw not_implemented("fastallreduce: no " + std::string(what) + " path for device " + t.device().str() +
                          " in this build");
}

bool reduces(Kind k) { return k == Kind::kAllreduce || k == Kind::kReduceScatter; }

// Why the kernels have no arithmetic for `op` on `dt` (nullopt: they have).
std::optional<std::string> no_arithmetic(DType dt, RedOp op) {
  if (op == RedOp::kAvg && !is_floating(dt))
    return std::string("fastallreduce: op=avg needs a floating dtype, got ") + dtype_name(dt) +
           " (integer division would silently truncate; use sum)";
  if (dt == DType::kBool && op != RedOp::kMax && op != RedOp::kMin)
    return std::string("fastallreduce: bool tensors support only op=max / op=min, got op=") + op_name(op);
  return std::nullopt;
}

void check_dtype(const at::Tensor& t, Kind k, RedOp op) {
  const std::optional<DType> dt = to_dtype(t.scalar_type());
  if (!dt) throw type_error("fastallreduce: unsupported dtype " + str(t));
  if (!reduces(k)) return;
  if (auto why = no_arithmetic(*dt, op)) throw type_error(*why);
}

// The bytes a view can touch, from its strides.
std::pair<const char*, const char*> extent(const at::Tensor& t) {
  const char* p = static_cast<const char*>(t.data_ptr());
  int64_t lo = 0, hi = 0;
  for (int64_t d = 0; d < t.dim(); ++d) (t.stride(d) < 0 ? lo : hi) += (t.size(d) - 1) * t.stride(d);
  return {p + lo * t.element_size(), p + (hi + 1) * t.element_size()};
}

bool overlap(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const auto ea = extent(a), eb = extent(b);
  return ea.first < eb.second && eb.first < ea.second;
}

// A tensor the kernels take as it is: dense, contiguous, without lazy conj/neg bits.
bool plain(const at::Tensor& t) { return t.is_contiguous() && !t.is_conj() && !t.is_neg(); }

// `part` is exactly rank `rank`'s slice of `whole` (of `n` equal slices): the in-place forms of
// allgather (input = the rank's slice of the output) and reduce_scatter (output = the rank's
// slice of the input) that torch's collectives accept and FSDP2 issues. The paths read and
// write that slice only where the in-place result is still right (shm_collectives.cpp).
bool own_slice(const at::Tensor& part, const at::Tensor& whole, int64_t rank, int64_t n) {
  if (!plain(part) || !plain(whole) || part.numel() == 0 || whole.numel() != n * part.numel()) return false;
  const char* start = static_cast<const char*>(whole.data_ptr()) + rank * part.numel() * part.element_size();
  return part.data_ptr() == start;
}

at::Tensor staged_input(const at::Tensor& t) {
  if (plain(t)) return t;
  return t.detach().resolve_conj().resolve_neg().contiguous();
}

}  // namespace

Planner::Planner(int rank, int size, const CommConfig& cfg, const Topology& topo, size_t slot_bytes, bool cuda_ok,
                 const BufferRegistry* registry)
    : rank_(rank), size_(size), cfg_(cfg), topo_(topo), shm_(wants_shm(topo)), cross_(wants_cross(topo)),
      slot_bytes_(slot_bytes), cuda_ok_(cuda_ok), registry_(registry) {}

Call Planner::prepare(const Collective& c) const {
  if (static_cast<int>(c.kind) >= kNumEngineKinds)
    throw value_error("fastallreduce: unknown collective code " + std::to_string(static_cast<int>(c.kind)));
  if (static_cast<int>(c.op) >= kNumOps)
    throw value_error("fastallreduce: unknown reduce op code " + std::to_string(static_cast<int>(c.op)));
  if (static_cast<int>(c.algo) >= kNumUserAlgos)
    throw value_error("fastallreduce: unknown algorithm code " + std::to_string(static_cast<int>(c.algo)));
  const Kind k = c.kind;
  const RedOp op = reduces(k) ? c.op : RedOp::kSum;  // gathers and broadcasts copy
  check_tensor(c.input, k == Kind::kBroadcast ? "broadcast" : "input", cuda_ok_);
  check_dtype(c.input, k, op);
  const bool in_place = k == Kind::kBroadcast || !c.output.defined() || c.output.is_same(c.input);
  if (!in_place) {
    check_tensor(c.output, "output", cuda_ok_);
    if (c.output.device() != c.input.device())
      throw value_error("fastallreduce: output is on " + c.output.device().str() + ", input on " +
                        c.input.device().str());
    if (c.output.scalar_type() != c.input.scalar_type())
      throw type_error("fastallreduce: output has dtype " + str(c.output) + ", input has " + str(c.input));
    const bool in_place_slice = (k == Kind::kAllgather && own_slice(c.input, c.output, rank_, size_)) ||
                                (k == Kind::kReduceScatter && own_slice(c.output, c.input, rank_, size_));
    if (!in_place_slice && overlap(c.input, c.output))
      throw value_error(std::string("fastallreduce: ") + kind_name(k) +
                        " input and output overlap (other than the output's own slice in place)");
  }
  // A written tensor with elements that share memory (expand(), as_strided) cannot hold the
  // result: rejected here, before anything moves, instead of failing in the copy back after.
  const at::Tensor& written = in_place ? c.input : c.output;
  if (at::has_internal_overlap(written) == at::MemOverlap::Yes)
    throw value_error(std::string("fastallreduce: the ") + kind_name(k) + (in_place ? " tensor" : " output") +
                      " has elements that share memory (e.g. from expand()); pass one with distinct elements "
                      "(.contiguous() or .clone())");
  // CUDA tensors always run on NCCL: `algorithm` names a CPU path.
  const bool cuda = c.input.device().is_cuda();
  const int64_t n = size_, in_n = c.input.numel(), out_n = in_place ? in_n : c.output.numel();
  switch (k) {
    case Kind::kAllreduce:
      if (!in_place && c.output.sizes() != c.input.sizes())
        throw value_error("fastallreduce: out has shape " + c10::str(c.output.sizes()) + ", tensor has " +
                          c10::str(c.input.sizes()));
      if (!cuda && !supports(c.algo))
        throw value_error(std::string("fastallreduce: algorithm=") + algo_name(c.algo) +
                          " cannot run on this topology (shm needs every rank on one host)");
      break;
    case Kind::kAllgather:
      if (in_place || out_n != n * in_n)
        throw value_error("fastallreduce: allgather output has " + std::to_string(out_n) +
                          " elements; it needs group size x input = " + std::to_string(n * in_n));
      break;
    case Kind::kReduceScatter:
      if (in_place || in_n != n * out_n)
        throw value_error("fastallreduce: reduce_scatter input has " + std::to_string(in_n) +
                          " elements; it needs group size x output = " + std::to_string(n * out_n));
      break;
    case Kind::kBroadcast:
      if (c.root < 0 || c.root >= n)
        throw value_error("fastallreduce: broadcast src " + std::to_string(c.root) +
                          " is not a rank of the group (size " + std::to_string(n) + ")");
      break;
    default: break;
  }

  Call call;
  call.kind = k;
  call.op = op;
  call.root = k == Kind::kBroadcast ? c.root : 0;
  call.account = c.account;
  call.in = staged_input(c.input);
  const at::Tensor& user_out = in_place ? c.input : c.output;
  if (plain(user_out)) {
    call.out = in_place ? call.in : user_out;
    if (in_place && !call.in.is_same(c.input)) call.copy_back = c.input;  // staged in-place tensor
  } else {
    call.out = in_place ? call.in : at::empty({user_out.numel()}, user_out.options());
    call.copy_back = user_out;
  }
  // The path, from what every rank shares.
  const size_t bytes = static_cast<size_t>(call.out.numel()) * call.out.element_size();
  if (cuda) {
    call.algo = Algo::kNccl;
    // The caller's current stream: NCCL's work is ordered after what it has queued.
    const c10::Device dev = c.input.device();
    call.stream = c10::impl::getDeviceGuardImpl(dev.type())->getStream(dev);
  } else if (k == Kind::kAllreduce) {
    Algo a = c.algo == Algo::kAuto ? choose(bytes) : c.algo;
    if (a == Algo::kHierarchical && !(shm_ && topo_.uniform && cross_)) a = choose_flat(bytes);
    call.algo = a;
  } else {
    call.algo = single_host() ? Algo::kShm : choose(static_cast<size_t>(in_n + out_n) * c.input.element_size());
    // The allreduce the call runs as across hosts: of the whole output for allgather, else of the input.
    if (!single_host())
      call.inner_algo = choose(static_cast<size_t>(k == Kind::kAllgather ? out_n : in_n) * c.input.element_size());
  }
  Header& h = call.header;
  h.kind = static_cast<uint8_t>(k);
  h.op = static_cast<uint8_t>(op);
  h.root = static_cast<uint32_t>(call.root);
  h.dtype = static_cast<uint8_t>(c.input.scalar_type());
  h.device = static_cast<uint8_t>(c.input.device().type());
  h.count = static_cast<uint64_t>(k == Kind::kReduceScatter ? out_n : in_n);
  h.algo = static_cast<uint8_t>(call.algo);
  mark_registered(call);
  return call;
}

Call Planner::delegated(const Delegated& d) {
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
  return call;
}

bool Planner::takes(Kind kind, const at::Tensor& t, std::optional<RedOp> op) const {
  const std::optional<DType> dt = t.defined() ? to_dtype(t.scalar_type()) : std::nullopt;
  if (!dt || !t.device().is_cpu() || t.layout() != at::kStrided) return false;
  // Reductions the kernels have no arithmetic for keep the delegate's behaviour (and errors).
  if (reduces(kind) && (!op || no_arithmetic(*dt, *op))) return false;
  return kind == Kind::kAllreduce || single_host();
}

bool Planner::supports(Algo a) const {
  switch (a) {
    case Algo::kShm: return single_host();
    case Algo::kDelegate:
    case Algo::kNccl: return false;  // chosen by the engine, never requested
    default: return true;  // hierarchical runs flat where it cannot run hierarchically
  }
}

Algo Planner::choose(size_t bytes) const {
  if (shm_ && topo_.num_hosts == 1) return Algo::kShm;
  const Algo flat = choose_flat(bytes);
  if (shm_ && topo_.uniform && cross_) {
    // Hierarchical: per slot-sized chunk the shared-memory stages plus the cross-host allreduce
    // of each local rank's 1/L share among the H hosts (a swap between two); flat: every byte
    // among all ranks. Every term comes from constants agreed at construction, so every rank
    // decides alike.
    const int l = static_cast<int>(topo_.local.group_ranks.size());
    const double hier = cfg_.cost.hier_us(bytes, topo_.num_hosts, l, slot_bytes_);
    if (hier <= std::min(cfg_.cost.hd_us(bytes, size_), cfg_.cost.ring_us(bytes, size_))) return Algo::kHierarchical;
  }
  return flat;
}

Algo Planner::choose_flat(size_t bytes) const {
  return cfg_.cost.hd_us(bytes, size_) <= cfg_.cost.ring_us(bytes, size_) ? Algo::kHalvingDoubling : Algo::kRing;
}

void Planner::mark_registered(Call& c) const {
  // In place on the caller's own tensor, on a path that runs in shared memory.
  if (!registry_ || c.kind != Kind::kAllreduce || !on_shm(c.algo) || c.copy_back.defined() ||
      !c.out.is_same(c.in) || c.in.numel() == 0)
    return;
  const auto found = registry_->find(c.in.data_ptr(), static_cast<size_t>(c.in.numel()) * c.in.element_size());
  if (!found) return;
  c.header.reg = found->first;
  c.header.reg_offset = found->second;
}

}  // namespace far
