// Reduction kernels on host memory: the arithmetic every CPU algorithm shares.
// Free of ATen so the avx2 translation unit can be compiled with its own target flags.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/types.h"

namespace far {

// dst[i] = op(dst[i], src[i]). Avg accumulates like sum; the division is scale_div().
// 16-bit floats are computed in float32 and rounded on every call (one rounding per hop).
void reduce_inplace(void* dst, const void* src, size_t n, DType t, RedOp op, int threads = 1);

// dst[i] = op(srcs[0][i], srcs[1][i], ...) in the fixed order 0..k-1. 16-bit floats accumulate
// in float32 and round once. For avg, the sum is divided by `divisor` before rounding. `dst` may
// be one of `srcs` (each element is read from every source before it is written).
void reduce_many(void* dst, const void* const* srcs, int k, size_t n, DType t, RedOp op,
                 int divisor, int threads = 1);

// dst[i] /= divisor (the final step of avg on floating dtypes).
void scale_div(void* dst, size_t n, DType t, int divisor, int threads = 1);

namespace detail {
// One implementation per instruction set; reduce.cpp picks one at run time.
struct KernelTable {
  void (*reduce_inplace)(void*, const void*, size_t, DType, RedOp);
  void (*reduce_many)(void*, const void* const*, int, size_t, DType, RedOp, int);
  void (*scale_div)(void*, size_t, DType, int);
};
extern const KernelTable kGenericKernels;
extern const KernelTable kAvx2Kernels;
}  // namespace detail

}  // namespace far
