// Fused multi-tensor SGD-momentum update on host memory: one call updates many
// (param, grad, momentum buffer) triples in a single pass over memory.
// Free of ATen so the avx2 translation unit can be compiled with its own target flags.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/reduce.h"  // DType

namespace far {

// Where the learning rate lives.
//   kTorch:        v = m*v + (1-d)*g';  p -= lr*v              (torch.optim.SGD)
//   kLrInMomentum: u = s*m*u + (1-d)*lr*g';  p -= u            (Goyal et al.; s = momentum_scale)
// with g' = (maximize ? -g : g) + wd*p. Nesterov uses g' + m*v (resp. lr*g' + m*u).
enum class SgdForm : uint8_t { kTorch, kLrInMomentum };

// One tensor to update. All three pointers address `numel` elements of `dtype` laid out the same
// way; `buf` may be null when momentum is 0. `init_buf`: this is the buffer's first step, it is
// written (buffer = g', as torch does; lr*g' in the lr-in-momentum form), never read.
struct SgdTensor {
  void* param;
  const void* grad;
  void* buf;
  int64_t numel;
  DType dtype;
  bool init_buf;
};

struct SgdParams {
  double lr = 0;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
  bool maximize = false;
  SgdForm form = SgdForm::kTorch;
  // kLrInMomentum only: the momentum correction factor lr_new / lr_old applied to u (1 = none).
  double momentum_scale = 1.0;
  // Round float32/float64 like ATen's vectorised CPU kernels: add(x, y, alpha) is one fused
  // multiply-add there (vec::fmadd, and the compiler contracts the scalar tail too). False
  // rounds the product and the sum separately, as ATen's DEFAULT (non-SIMD) build does.
  // 16-bit floats: float32 math in the same order, rounded to storage once per result (like
  // torch's fused CPU kernel, which equals this bit for bit on AVX2/AVX-512).
  bool fma = true;
};

// Updates every tensor in place. Work is split over `threads` OpenMP threads (in contiguous
// pieces of the concatenated elements); the result does not depend on `threads`.
// Throws std::invalid_argument for a dtype other than float32/float64/float16/bfloat16.
void sgd_step(const SgdTensor* tensors, size_t count, const SgdParams& params, int threads = 1);

// Asks the OS to back [ptr, ptr + bytes) with transparent huge pages where whole 2 MB pages fit
// (madvise MADV_HUGEPAGE). For memory not yet touched (a new momentum buffer) it takes effect
// at the first write: fewer TLB misses when the kernel streams through it. Returns false where
// unsupported or refused; never an error.
bool advise_huge_pages(void* ptr, size_t bytes);

namespace detail {
// Updates elements [begin, end) of one tensor. One implementation per instruction set;
// sgd.cpp picks one at run time.
using SgdRangeFn = void (*)(const SgdTensor&, int64_t begin, int64_t end, const SgdParams&);
extern const SgdRangeFn kSgdGeneric;
extern const SgdRangeFn kSgdAvx2;
}  // namespace detail

}  // namespace far
