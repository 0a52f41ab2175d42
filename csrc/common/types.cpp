#include "common/types.h"

namespace far {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat64: case DType::kInt64: return 8;
    case DType::kFloat32: case DType::kInt32: return 4;
    case DType::kFloat16: case DType::kBFloat16: return 2;
    default: return 1;
  }
}

const char* dtype_name(DType t) {
  static const char* names[] = {"float32", "float64", "float16", "bfloat16", "int8", "uint8", "int32", "int64", "bool"};
  const int i = static_cast<int>(t);
  return i <= static_cast<int>(DType::kBool) ? names[i] : "?";
}

const char* op_name(RedOp op) {
  static const char* names[] = {"sum", "avg", "product", "max", "min"};
  const int i = static_cast<int>(op);
  return i < kNumOps ? names[i] : "other";
}

const char* kind_name(Kind k) {
  static const char* names[] = {"allreduce", "allgather", "reduce_scatter", "broadcast", "reduce",
                                "gather",    "scatter",   "all_to_all",     "barrier",   "coalesced"};
  const int i = static_cast<int>(k);
  return i < kNumKinds ? names[i] : "?";
}

const char* algo_name(Algo a) {
  static const char* names[] = {"auto", "ring", "halving_doubling", "shm", "hierarchical", "delegate", "nccl"};
  const int i = static_cast<int>(a);
  return i <= static_cast<int>(Algo::kNccl) ? names[i] : "?";
}

bool is_floating(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat64 || t == DType::kFloat16 || t == DType::kBFloat16;
}

}  // namespace far
