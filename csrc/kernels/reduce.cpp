// Run-time choice of kernel ISA, and splitting work across threads.
#include "kernels/reduce.h"

#include <algorithm>

namespace far {
namespace {

const detail::KernelTable& kernels() {
  static const detail::KernelTable* table = [] {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
      return &detail::kAvx2Kernels;
#endif
    return &detail::kGenericKernels;
  }();
  return *table;
}

// Threads only pay off for large spans; each thread gets a contiguous, cache-line aligned piece.
constexpr size_t kMinBytesPerThread = 256 * 1024;

template <typename F>
void split(size_t n, size_t esize, int threads, F&& fn) {
  int t = std::max(1, threads);
  t = static_cast<int>(std::min<size_t>(t, std::max<size_t>(1, n * esize / kMinBytesPerThread)));
  if (t <= 1) {
    fn(0, n);
    return;
  }
  const size_t per = ((n + t - 1) / t + 63) & ~size_t(63);
#pragma omp parallel for num_threads(t) schedule(static)
  for (int i = 0; i < t; ++i) {
    size_t b = std::min(n, per * i), e = std::min(n, b + per);
    if (e > b) fn(b, e);
  }
}

}  // namespace

void reduce_inplace(void* dst, const void* src, size_t n, DType t, RedOp op, int threads) {
  const size_t es = dtype_size(t);
  split(n, es, threads, [&](size_t b, size_t e) {
    kernels().reduce_inplace(static_cast<char*>(dst) + b * es, static_cast<const char*>(src) + b * es, e - b, t, op);
  });
}

void reduce_many(void* dst, const void* const* srcs, int k, size_t n, DType t, RedOp op, int divisor, int threads) {
  const size_t es = dtype_size(t);
  split(n, es, threads, [&](size_t b, size_t e) {
    const void* shifted[64];
    const void** ptrs = k <= 64 ? shifted : new const void*[k];
    for (int r = 0; r < k; ++r) ptrs[r] = static_cast<const char*>(srcs[r]) + b * es;
    kernels().reduce_many(static_cast<char*>(dst) + b * es, ptrs, k, e - b, t, op, divisor);
    if (ptrs != shifted) delete[] ptrs;
  });
}

void scale_div(void* dst, size_t n, DType t, int divisor, int threads) {
  if (divisor == 1) return;
  const size_t es = dtype_size(t);
  split(n, es, threads, [&](size_t b, size_t e) {
    kernels().scale_div(static_cast<char*>(dst) + b * es, e - b, t, divisor);
  });
}

}  // namespace far
