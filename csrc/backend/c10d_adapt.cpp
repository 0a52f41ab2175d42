#include "backend/c10d_adapt.h"

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <numeric>

#include "common/errors.h"

namespace far {

using c10::ivalue::Future;

std::exception_ptr as_dist_error(std::exception_ptr e) {
  const c10::SourceLocation here{__func__, __FILE__, static_cast<uint32_t>(__LINE__)};
  try {
    std::rethrow_exception(e);
  } catch (const c10::Error&) {
    return std::current_exception();
  } catch (const ArgError& x) {
    if (x.type == ArgError::kType) return std::make_exception_ptr(c10::TypeError(here, x.what()));
    if (x.type == ArgError::kValue) return std::make_exception_ptr(c10::ValueError(here, x.what()));
    return std::make_exception_ptr(c10::NotImplementedError(here, x.what()));
  } catch (const MismatchError& x) {
    return std::make_exception_ptr(c10::DistBackendError(here, std::string("fastallreduce MismatchError: ") + x.what()));
  } catch (const CommTimeoutError& x) {
    return std::make_exception_ptr(c10::DistBackendError(here, std::string("fastallreduce CommTimeoutError: ") + x.what()));
  } catch (const ClosedError& x) {
    return std::make_exception_ptr(c10::DistBackendError(here, std::string("fastallreduce ClosedError: ") + x.what()));
  } catch (const std::exception& x) {
    return std::make_exception_ptr(c10::DistBackendError(here, std::string("fastallreduce: ") + x.what()));
  }
}

[[noreturn]] void rethrow_as_dist_error() { std::rethrow_exception(as_dist_error(std::current_exception())); }

std::optional<RedOp> to_redop(const c10d::ReduceOp& op) {
  switch (op.op_) {
    case c10d::ReduceOp::SUM: return RedOp::kSum;
    case c10d::ReduceOp::AVG: return RedOp::kAvg;
    case c10d::ReduceOp::PRODUCT: return RedOp::kProduct;
    case c10d::ReduceOp::MAX: return RedOp::kMax;
    case c10d::ReduceOp::MIN: return RedOp::kMin;
    default: return std::nullopt;  // BAND/BOR/BXOR/PREMUL_SUM: Gloo's behaviour (and errors)
  }
}

RedOp header_op(const c10d::ReduceOp& op) { return to_redop(op).value_or(static_cast<RedOp>(kNumOps)); }

c10::intrusive_ptr<Future> as_list_future(const c10::intrusive_ptr<Future>& engine_fut, std::vector<at::Tensor> outs,
                                          std::function<void()> finish) {
  auto fut = c10::make_intrusive<Future>(c10::ListType::ofTensors());
  // Runs inline on the engine thread when the op finishes: no GIL, no extra hand-off.
  // `outs` move into the value, so the engine thread never holds the last C++ reference to a
  // tensor Python also owns (dropping that one takes the GIL).
  engine_fut->addCallback([fut, outs = std::move(outs), finish = std::move(finish)](Future& f) mutable {
    if (f.hasError()) {
      fut->setError(as_dist_error(f.exception_ptr()));
    } else {
      try {
        if (finish) finish();
        fut->markCompleted(c10::IValue(std::move(outs)));
      } catch (...) {
        fut->setError(as_dist_error(std::current_exception()));
      }
    }
    outs.clear();
    finish = nullptr;
  });
  return fut;
}

int64_t total_numel(const std::vector<at::Tensor>& ts) {
  return std::accumulate(ts.begin(), ts.end(), int64_t(0), [](int64_t a, const at::Tensor& t) { return a + t.numel(); });
}

at::ScalarType dtype_of(const std::vector<at::Tensor>& ts) { return ts.empty() ? at::kByte : ts[0].scalar_type(); }
c10::DeviceType device_of(const std::vector<at::Tensor>& ts) { return ts.empty() ? c10::kCPU : ts[0].device().type(); }

// torch gives every incarnation of a group the same store prefix: a group destroyed and made
// again on the same store (an in-process restart) would read the previous one's keys (segment
// names, Gloo addresses, attach counts, abort records). Each incarnation gets its own namespace:
// every rank counts itself in, and all `size` ranks of one incarnation count in before any rank
// can finish making it (the engine's constructor waits for all of them), so (count - 1) / size
// is the same number on every rank.
c10::intrusive_ptr<c10d::Store> incarnation_store(const c10::intrusive_ptr<c10d::Store>& store, int size) {
  const int64_t generation = (store->add("fastallreduce/incarnations", 1) - 1) / size;
  return c10::make_intrusive<c10d::PrefixStore>("fastallreduce/" + std::to_string(generation) + "/", store);
}

}  // namespace far
