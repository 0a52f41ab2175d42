// Runs one validated call on the path prepare() chose. Every path starts with the header check,
// over a transport chosen from the topology alone, so that two ranks that chose different paths
// still meet in it and raise MismatchError instead of waiting for each other:
//   one host:   the shared-memory slot headers (the first chunk of the shared-memory paths; a
//               header-only chunk before the point-to-point and delegated paths);
//   otherwise:  each rank compares with its left neighbour over point-to-point, then runs
//               hierarchical / ring / halving-doubling, or a gather-family call as one allreduce.
#include <ATen/record_function.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "algorithms/hierarchical.h"
#include "algorithms/shm_collectives.h"
#include "common/aten.h"
#include "common/knobs.h"
#include "common/errors.h"
#include "engine/communicator.h"

namespace far {
namespace {

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

std::exception_ptr Communicator::execute(Task& task) {
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
    if (registry_) registry_->unlink_all();
    if (!aborted_ || fired_.load() == 4) {
      const char* kind = dynamic_cast<const MismatchError*>(&e)      ? "mismatch"
                         : dynamic_cast<const CommTimeoutError*>(&e) ? "timeout"
                                                                     : "fault";
      const std::string mine = std::string(kind) + "|" + e.what();
      const std::string first = publish_abort(mine);
      const auto bar = first.find('|');
      const std::string k = first.substr(0, bar);
      // Every failure names the missing ranks, not only a deadline's (also a local peer's abort
      // or a timeout in shared memory, a transport error); reporting also publishes that this
      // rank was here. A mismatch is about the call, not about who is missing.
      const bool reported = !report_.empty();  // then e.what() carries it already
      if (!reported && k != "mismatch") missing_ranks_report();
      // A peer that failed first may have torn its connections down already, and our own
      // error is then only the echo of its failure: report the first failure instead. Records
      // in the store carry no report: this rank's is appended.
      if (first != mine || (!reported && !report_.empty())) {
        const std::string msg = first.substr(bar + 1) + report_;
        if (k == "mismatch") return std::make_exception_ptr(MismatchError(msg));
        if (k == "timeout") return std::make_exception_ptr(CommTimeoutError(msg));
        return std::make_exception_ptr(CommError(msg));
      }
    }
    return own ? own : std::make_exception_ptr(e);
  };
  try {
    if (aborted_) throw ClosedError("fastallreduce: communicator was aborted: " + abort_reason());
    RECORD_FUNCTION(record_name(c.kind), std::vector<c10::IValue>());
    begin_op(h);
    report_.clear();
    struct End {
      Communicator* self;
      ~End() { self->end_op(); }
    } end{this};
    if (c.algo == Algo::kNccl) {
      run_nccl(task, h);  // copies back itself, in stream order
    } else {
      run_call(c, h);
      if (c.copy_back.defined()) c.copy_back.detach().copy_(c.out.view(c.copy_back.sizes()));
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
    std::fprintf(stderr, "[fastallreduce %s rank %d] %s\n", opts_.name.c_str(), rank_, h.describe().c_str());
}

ShmContext Communicator::shm_context(const Header& h) { return ShmContext{*shm_, h, deadline_, poll_fn_, &shm_stats_}; }

bool Communicator::on_shm(Algo a) { return a == Algo::kShm || a == Algo::kHierarchical; }

ShmOptions Communicator::shm_options() const {
  ShmOptions so = cfg_.shm;
  so.threads = cfg_.algo.threads;
  return so;
}

void Communicator::run_call(const Call& c, const Header& h) {
  if (c.algo != Algo::kDelegate) announce(h);
  if (size_ == 1) {  // nothing to agree on: every collective is a copy (or nothing)
    if (c.algo != Algo::kDelegate && !c.out.is_same(c.in) && c.in.numel() > 0)
      std::memcpy(c.out.data_ptr(), c.in.data_ptr(), std::min(c.in.nbytes(), c.out.nbytes()));
    return;
  }
  if (single_host()) {
    const bool shm_path = on_shm(c.algo);
    if (!shm_path) check_header_only(h);
    if (c.algo == Algo::kDelegate) return;
    if (c.kind != Kind::kAllreduce) return run_gather_family(c, h);
    return run_allreduce(c, h, /*header_checked=*/!shm_path);
  }
  check_header(*p2p_, h);
  if (c.algo == Algo::kDelegate) return;
  if (c.kind != Kind::kAllreduce) return run_fallback(c, h);
  run_allreduce(c, h, /*header_checked=*/true);
}

void Communicator::run_allreduce(const Call& c, const Header& h, bool header_checked) {
  const bool shm_path = on_shm(c.algo);
  if (!shm_path && !c.out.is_same(c.in) && c.in.numel() > 0)
    std::memcpy(c.out.data_ptr(), c.in.data_ptr(), c.in.nbytes());
  Job job = job_of(c.in, c.out, c.op, size_);
  if (shm_path) {
    ShmContext ctx = shm_context(h);
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

void Communicator::run_gather_family(const Call& c, const Header& h) {
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
  ShmContext ctx = shm_context(h);
  shm_gather_family(ctx, job, shm_options());
}

void Communicator::run_fallback(const Call& c, const Header& h) {
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
  const size_t bytes = static_cast<size_t>(inner.out.numel()) * inner.out.element_size();
  inner.algo = choose(bytes);
  Header ih = h;
  ih.algo = static_cast<uint8_t>(inner.algo);
  run_allreduce(inner, ih, /*header_checked=*/true);
  switch (c.kind) {
    case Kind::kBroadcast: c.out.reshape({-1}).view(at::kByte).copy_(inner.out); break;
    case Kind::kAllgather: c.out.reshape({-1}).view(at::kByte).copy_(inner.out); break;
    default: c.out.reshape({-1}).copy_(inner.out.narrow(0, rank_ * c.out.numel(), c.out.numel())); break;
  }
}

void Communicator::check_header_only(const Header& h) {
  if (single_host()) {
    ShmContext ctx = shm_context(h);
    shm_header_only(ctx);
  } else {
    check_header(*p2p_, h);
  }
}

void Communicator::check_header(P2P& t, const Header& mine) {
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
