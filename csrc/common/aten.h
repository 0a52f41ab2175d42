// The mapping between ATen's types and the engine's.
#pragma once
#include <c10/core/ScalarType.h>

#include <optional>

#include "common/types.h"

namespace far {

// The kernels' dtype of an ATen scalar type, or nullopt when they have none.
std::optional<DType> to_dtype(at::ScalarType t);
// The same, for the floating dtypes the SGD kernels take.
std::optional<DType> to_float_dtype(at::ScalarType t);
// The ATen scalar type of a kernels' dtype.
at::ScalarType to_scalar_type(DType t);

}  // namespace far
