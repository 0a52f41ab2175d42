#include "transport/nccl.h"

#include <stdexcept>
#include <vector>

namespace far {
namespace {

c10d::ReduceOp wire_op(RedOp op) {
  switch (op) {
    case RedOp::kSum:
    case RedOp::kAvg: return c10d::ReduceOp::SUM;  // avg: divided before the wire
    case RedOp::kProduct: return c10d::ReduceOp::PRODUCT;
    case RedOp::kMax: return c10d::ReduceOp::MAX;
    case RedOp::kMin: return c10d::ReduceOp::MIN;
  }
  throw std::logic_error("fastallreduce: no NCCL reduce op");
}

}  // namespace

c10::intrusive_ptr<c10d::Work> nccl_issue(c10d::Backend& pg, Kind kind, RedOp op, const at::Tensor& in,
                                          const at::Tensor& out, int root) {
  const int64_t n = pg.getSize();
  const bool avg = op == RedOp::kAvg;
  switch (kind) {
    case Kind::kAllreduce: {
      // The division (or copy) runs on the current stream, which NCCL's stream waits for.
      if (!out.is_same(in)) out.copy_(in);
      if (avg) out.div_(n);
      std::vector<at::Tensor> ts{out};
      c10d::AllreduceOptions o;
      o.reduceOp = wire_op(op);
      return pg.allreduce(ts, o);
    }
    case Kind::kBroadcast: {
      std::vector<at::Tensor> ts{in};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      return pg.broadcast(ts, o);
    }
    case Kind::kAllgather: {
      at::Tensor flat_out = out.view({-1}), flat_in = in.view({-1});
      return pg._allgather_base(flat_out, flat_in, c10d::AllgatherOptions());
    }
    case Kind::kReduceScatter: {
      at::Tensor flat_out = out.view({-1}), flat_in = avg ? in.view({-1}).div(n) : in.view({-1});
      c10d::ReduceScatterOptions o;
      o.reduceOp = wire_op(op);
      return pg._reduce_scatter_base(flat_out, flat_in, o);
    }
    default: break;
  }
  throw std::logic_error(std::string("fastallreduce: no NCCL path for ") + kind_name(kind));
}

std::string nccl_fault_record(int work_result, int rank, const std::string& what) {
  const std::string head = "fastallreduce: rank " + std::to_string(rank) + ": " + what;
  switch (static_cast<c10d::WorkResult>(work_result)) {
    case c10d::WorkResult::SUCCESS: return "";
    case c10d::WorkResult::TIMEOUT:
      return "timeout|" + head + " did not complete on NCCL within the timeout (torch's NCCL watchdog aborted the group)";
    case c10d::WorkResult::COMM_ERROR:
      return "fault|" + head + " failed on NCCL with a communication error (a peer's process or its link failed; "
             "torch's NCCL watchdog aborted the group)";
    default:
      return "fault|" + head + " failed on NCCL (torch's NCCL watchdog reported result " +
             std::to_string(work_result) + " and aborted the group)";
  }
}

}  // namespace far
