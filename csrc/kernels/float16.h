// 16-bit float storage types and their float32 conversions, rounding like c10::Half and
// c10::BFloat16 (round to nearest even; NaN stays NaN). Header-only with internal linkage so
// that each instruction-set translation unit gets its own copy.
#pragma once
#include <cstdint>
#include <cstring>

namespace far {
namespace {

using f16 = _Float16;  // with F16C these conversions become vcvtph2ps / vcvtps2ph
struct BF16 { uint16_t x; };

inline float bf16_to_float(BF16 v) {
  uint32_t u = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline BF16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (f != f) return BF16{0x7FC0};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return BF16{static_cast<uint16_t>(u >> 16)};
}

// Storage type S <-> compute type C (float for the 16-bit types).
template <typename S> struct Compute { using C = S; static C load(S v) { return v; } static S store(C v) { return v; } };
template <> struct Compute<f16> { using C = float; static float load(f16 v) { return static_cast<float>(v); } static f16 store(float v) { return static_cast<f16>(v); } };
template <> struct Compute<BF16> { using C = float; static float load(BF16 v) { return bf16_to_float(v); } static BF16 store(float v) { return float_to_bf16(v); } };

}  // namespace
}  // namespace far
