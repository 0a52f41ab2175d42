#include "common/aten.h"

namespace far {

std::optional<DType> to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kChar: return DType::kInt8;
    case at::kByte: return DType::kUInt8;
    case at::kInt: return DType::kInt32;
    case at::kLong: return DType::kInt64;
    case at::kBool: return DType::kBool;
    default: return std::nullopt;
  }
}

std::optional<DType> to_float_dtype(at::ScalarType t) {
  auto d = to_dtype(t);
  if (d && is_floating(*d)) return d;
  return std::nullopt;
}

}  // namespace far
