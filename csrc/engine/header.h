// The always-on description of a collective that ranks compare before any data moves.
#pragma once
#include <cstdint>
#include <string>

#include "algorithms/algorithm.h"

namespace far {

// Which collective a call is. Allreduce runs every algorithm; the others run on shared memory
// only (every rank on one host), where they beat Gloo's loopback TCP by the most.
enum class Kind : uint8_t { kAllreduce, kAllgather, kReduceScatter, kBroadcast };
inline const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kAllreduce: return "allreduce";
    case Kind::kAllgather: return "allgather";
    case Kind::kReduceScatter: return "reduce_scatter";
    case Kind::kBroadcast: return "broadcast";
  }
  return "?";
}

struct Header {
  uint32_t magic = 0xFA57A11Eu;
  uint32_t rank = 0;
  uint64_t seq = 0;    // collective number on this communicator
  uint64_t count = 0;  // elements (per rank for allgather and reduce_scatter)
  uint8_t dtype = 0, op = 0, algo = 0, kind = 0;
  uint32_t root = 0;  // broadcast's source rank

  bool same_call(const Header& o) const {
    return magic == o.magic && seq == o.seq && count == o.count && dtype == o.dtype && op == o.op &&
           algo == o.algo && kind == o.kind && root == o.root;
  }
  std::string describe() const {
    const Kind k = static_cast<Kind>(kind);
    std::string s = std::string(kind_name(k)) + " #" + std::to_string(seq) + " of " + std::to_string(count) + " " +
                    dtype_name(static_cast<DType>(dtype));
    if (k == Kind::kAllreduce || k == Kind::kReduceScatter) s += std::string(" op=") + op_name(static_cast<RedOp>(op));
    if (k == Kind::kBroadcast) s += " root=" + std::to_string(root);
    return s + " algorithm=" + algo_name(static_cast<Algo>(algo));
  }
};
static_assert(sizeof(Header) == 32, "header travels as 32 raw bytes");

}  // namespace far
