// Run-time choice of the SGD kernel's instruction set, and splitting one multi-tensor update
// across threads.
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/sgd.h"

namespace far {
namespace {

detail::SgdRangeFn kernel() {
  static const detail::SgdRangeFn fn = [] {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      return detail::kSgdAvx2;
#endif
    return detail::kSgdGeneric;
  }();
  return fn;
}

// Below this many parameter bytes per thread, waking another thread costs more than it saves.
constexpr int64_t kMinBytesPerThread = 256 * 1024;
constexpr int64_t kAlign = 64;  // piece boundaries on cache lines, so no line is shared
constexpr int64_t kPiecesPerThread = 8;

bool supported(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 || t == DType::kBFloat16;
}

}  // namespace

void sgd_step(const SgdTensor* tensors, size_t count, const SgdParams& params, int threads) {
  // Work is split into contiguous pieces of the concatenation of all tensors (by bytes), so
  // that 161 tensors of very different sizes still split evenly.
  std::vector<int64_t> offset(count + 1, 0);
  for (size_t i = 0; i < count; ++i) {
    const SgdTensor& t = tensors[i];
    if (!supported(t.dtype))
      throw std::invalid_argument(std::string("fastallreduce: SGD kernel: unsupported dtype ") + dtype_name(t.dtype));
    if (params.momentum != 0 && t.numel > 0 && t.buf == nullptr)
      throw std::invalid_argument("fastallreduce: SGD kernel: momentum != 0 needs a momentum buffer");
    offset[i + 1] = offset[i] + t.numel * static_cast<int64_t>(dtype_size(t.dtype));
  }
  const int64_t total = offset[count];
  if (total == 0) return;
  const detail::SgdRangeFn fn = kernel();

  auto run_piece = [&](int64_t lo, int64_t hi) {
    // Element j of tensor i sits at byte offset[i] + j*es; it belongs to the piece holding that byte.
    auto first = std::upper_bound(offset.begin(), offset.end(), lo) - offset.begin() - 1;
    for (size_t i = static_cast<size_t>(std::max<ptrdiff_t>(first, 0)); i < count && offset[i] < hi; ++i) {
      const SgdTensor& t = tensors[i];
      const int64_t es = static_cast<int64_t>(dtype_size(t.dtype));
      const int64_t b = std::clamp<int64_t>((lo - offset[i] + es - 1) / es, 0, t.numel);
      const int64_t e = std::clamp<int64_t>((hi - offset[i] + es - 1) / es, 0, t.numel);
      if (e > b) fn(t, b, e, params);
    }
  };

  int nt = static_cast<int>(std::clamp<int64_t>(total / kMinBytesPerThread, 1, std::max(1, threads)));
  if (nt <= 1) {
    run_piece(0, total);
    return;
  }
  // A few pieces per thread, handed out dynamically: a thread that the OS parks for a while
  // (busy machine) delays the step by one piece, not by its whole share.
  const int64_t pieces = std::min<int64_t>(int64_t(nt) * kPiecesPerThread, std::max<int64_t>(nt, total / kMinBytesPerThread));
  const int64_t per = ((total + pieces - 1) / pieces + kAlign - 1) / kAlign * kAlign;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t k = 0; k < pieces; ++k) {
    const int64_t lo = std::min(total, per * k), hi = std::min(total, lo + per);
    if (hi > lo) run_piece(lo, hi);
  }
}

bool advise_huge_pages(void* ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(ptr) + bytes) & ~(kHuge - 1);
  return e > b && madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE) == 0;
#else
  (void)ptr;
  (void)bytes;
  return false;
#endif
}

}  // namespace far
