// Kernel bodies, included once per instruction set (reduce_generic.cpp, reduce_avx2.cpp).
// Everything here has internal linkage so that differently-compiled copies never merge.
// Plain loops written for the auto-vectoriser: with -mavx2 -mf16c, _Float16 conversions
// become vcvtph2ps/vcvtps2ph and the float math 8 lanes wide.
#include <cstring>
#include <type_traits>

#include "kernels/reduce.h"

namespace far {
namespace {

using f16 = _Float16;

inline float bf16_to_f32(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN stays NaN (as c10::BFloat16)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (f != f) return 0x7FC0;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Storage <-> compute type. Compute type is float for 16-bit floats.
template <typename S> struct Traits { using C = S; static C load(S v) { return v; } static S store(C v) { return v; } };
template <> struct Traits<f16> { using C = float; static float load(f16 v) { return (float)v; } static f16 store(float v) { return (f16)v; } };
struct BF16 { uint16_t x; };
template <> struct Traits<BF16> { using C = float; static float load(BF16 v) { return bf16_to_f32(v.x); } static BF16 store(float v) { return BF16{f32_to_bf16(v)}; } };

// Signed integer sum/product wrap like torch's (two's complement) without C++ UB.
template <typename T> struct Wrap { using U = T; };
template <> struct Wrap<int8_t> { using U = uint8_t; };
template <> struct Wrap<int32_t> { using U = uint32_t; };
template <> struct Wrap<int64_t> { using U = uint64_t; };

template <typename C> inline C op_sum(C a, C b) {
  if constexpr (std::is_integral_v<C>) { using U = typename Wrap<C>::U; return (C)(U)((U)a + (U)b); }
  else return a + b;
}
template <typename C> inline C op_prod(C a, C b) {
  if constexpr (std::is_integral_v<C>) { using U = typename Wrap<C>::U; return (C)(U)((U)a * (U)b); }
  else return a * b;
}
// NaN wins, like torch.maximum / torch.minimum.
template <typename C> inline C op_max(C a, C b) {
  if constexpr (std::is_floating_point_v<C>) return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
  else return a > b ? a : b;
}
template <typename C> inline C op_min(C a, C b) {
  if constexpr (std::is_floating_point_v<C>) return (a != a) ? a : ((b != b) ? b : (a < b ? a : b));
  else return a < b ? a : b;
}

template <typename S, RedOp OP>
inline typename Traits<S>::C apply(typename Traits<S>::C a, typename Traits<S>::C b) {
  if constexpr (OP == RedOp::kSum || OP == RedOp::kAvg) return op_sum(a, b);
  else if constexpr (OP == RedOp::kProduct) return op_prod(a, b);
  else if constexpr (OP == RedOp::kMax) return op_max(a, b);
  else return op_min(a, b);
}

template <typename S, RedOp OP>
void inplace_t(S* __restrict dst, const S* __restrict src, size_t n) {
  using T = Traits<S>;
  for (size_t i = 0; i < n; ++i) dst[i] = T::store(apply<S, OP>(T::load(dst[i]), T::load(src[i])));
}

// `dst` may be one of `srcs` (the zero-copy path reduces a registered buffer in place): every
// block is read into the accumulator before any of it is stored, so dst is not restrict.
template <typename S, RedOp OP>
void many_t(S* dst, const S* const* srcs, int k, size_t n, int divisor) {
  using T = Traits<S>;
  using C = typename T::C;
  constexpr size_t kBlock = 1024;  // keep the float32 accumulator in L1
  C acc[kBlock];
  for (size_t base = 0; base < n; base += kBlock) {
    const size_t m = n - base < kBlock ? n - base : kBlock;
    const S* __restrict s0 = srcs[0] + base;
    for (size_t i = 0; i < m; ++i) acc[i] = T::load(s0[i]);
    for (int r = 1; r < k; ++r) {
      const S* __restrict s = srcs[r] + base;
      for (size_t i = 0; i < m; ++i) acc[i] = apply<S, OP>(acc[i], T::load(s[i]));
    }
    S* d = dst + base;
    if constexpr (OP == RedOp::kAvg) {
      const C div = (C)divisor;
      for (size_t i = 0; i < m; ++i) d[i] = T::store(acc[i] / div);
    } else {
      for (size_t i = 0; i < m; ++i) d[i] = T::store(acc[i]);
    }
  }
}

template <typename S>
void div_t(S* __restrict dst, size_t n, int divisor) {
  using T = Traits<S>;
  using C = typename T::C;
  const C div = (C)divisor;
  for (size_t i = 0; i < n; ++i) dst[i] = T::store(T::load(dst[i]) / div);
}

template <typename S>
void inplace_dispatch_op(void* dst, const void* src, size_t n, RedOp op) {
  auto* d = static_cast<S*>(dst);
  auto* s = static_cast<const S*>(src);
  switch (op) {
    case RedOp::kSum: case RedOp::kAvg: return inplace_t<S, RedOp::kSum>(d, s, n);
    case RedOp::kProduct: return inplace_t<S, RedOp::kProduct>(d, s, n);
    case RedOp::kMax: return inplace_t<S, RedOp::kMax>(d, s, n);
    case RedOp::kMin: return inplace_t<S, RedOp::kMin>(d, s, n);
  }
}

template <typename S>
void many_dispatch_op(void* dst, const void* const* srcs, int k, size_t n, RedOp op, int divisor) {
  auto* d = static_cast<S*>(dst);
  auto* s = reinterpret_cast<const S* const*>(srcs);
  switch (op) {
    case RedOp::kSum: return many_t<S, RedOp::kSum>(d, s, k, n, divisor);
    case RedOp::kAvg: return many_t<S, RedOp::kAvg>(d, s, k, n, divisor);
    case RedOp::kProduct: return many_t<S, RedOp::kProduct>(d, s, k, n, divisor);
    case RedOp::kMax: return many_t<S, RedOp::kMax>(d, s, k, n, divisor);
    case RedOp::kMin: return many_t<S, RedOp::kMin>(d, s, k, n, divisor);
  }
}

// bool: max is "any", min is "all"; stored as 0/1 bytes so uint8 max/min is exact.
#define FAR_DTYPE_SWITCH(t, FN, ...)                              \
  switch (t) {                                                     \
    case DType::kFloat32: return FN<float>(__VA_ARGS__);           \
    case DType::kFloat64: return FN<double>(__VA_ARGS__);          \
    case DType::kFloat16: return FN<f16>(__VA_ARGS__);             \
    case DType::kBFloat16: return FN<BF16>(__VA_ARGS__);           \
    case DType::kInt8: return FN<int8_t>(__VA_ARGS__);             \
    case DType::kUInt8: case DType::kBool: return FN<uint8_t>(__VA_ARGS__); \
    case DType::kInt32: return FN<int32_t>(__VA_ARGS__);           \
    case DType::kInt64: return FN<int64_t>(__VA_ARGS__);           \
  }

void k_reduce_inplace(void* dst, const void* src, size_t n, DType t, RedOp op) {
  FAR_DTYPE_SWITCH(t, inplace_dispatch_op, dst, src, n, op)
}
void k_reduce_many(void* dst, const void* const* srcs, int k, size_t n, DType t, RedOp op, int divisor) {
  FAR_DTYPE_SWITCH(t, many_dispatch_op, dst, srcs, k, n, op, divisor)
}
template <typename S> void div_dispatch(void* dst, size_t n, int divisor) { div_t<S>(static_cast<S*>(dst), n, divisor); }
void k_scale_div(void* dst, size_t n, DType t, int divisor) {
  FAR_DTYPE_SWITCH(t, div_dispatch, dst, n, divisor)
}
#undef FAR_DTYPE_SWITCH

}  // namespace
}  // namespace far
