// The vocabulary every layer shares: element types, reduce ops, collective kinds, algorithms.
// Free of ATen, so that the kernels (and their per-ISA translation units) can include it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace far {

enum class DType : uint8_t { kFloat32, kFloat64, kFloat16, kBFloat16, kInt8, kUInt8, kInt32, kInt64, kBool };
enum class RedOp : uint8_t { kSum, kAvg, kProduct, kMax, kMin };
constexpr int kNumOps = 5;

// Which collective a call is. The engine runs the first four; the others exist so that calls
// delegated to another backend carry their logical kind in the header too.
enum class Kind : uint8_t {
  kAllreduce, kAllgather, kReduceScatter, kBroadcast,
  kReduce, kGather, kScatter, kAllToAll, kBarrier, kCoalesced
};
constexpr int kNumKinds = 10;
constexpr int kNumEngineKinds = 4;

// How a call runs. kDelegate: the caller's own implementation (the torch backend's Gloo), after
// the engine has checked the header across ranks. kNccl: CUDA tensors, on the communicator's
// own NCCL group (torch's ProcessGroupNCCL), after the same check over the CPU transport.
enum class Algo : uint8_t { kAuto, kRing, kHalvingDoubling, kShm, kHierarchical, kDelegate, kNccl };
constexpr int kNumUserAlgos = 5;  // kAuto .. kHierarchical can be requested

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* op_name(RedOp op);
const char* kind_name(Kind k);
const char* algo_name(Algo a);
bool is_floating(DType t);
inline bool is_16bit_float(DType t) { return t == DType::kFloat16 || t == DType::kBFloat16; }

}  // namespace far
