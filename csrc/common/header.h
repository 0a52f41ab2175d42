// The always-on description of a collective that ranks compare before any data moves. It
// carries the logical call (kind, root, element count, ATen dtype, op) and the path the engine
// chose, on every path: shared memory, point-to-point, cross-host fallbacks and delegation.
#pragma once
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

#include "common/types.h"

namespace far {

struct Header {
  uint16_t magic = 0xFA57;
  uint8_t device = 0;  // c10::DeviceType
  uint8_t version = 1;
  uint32_t rank = 0;
  uint64_t seq = 0;    // collective number on this communicator
  uint64_t count = 0;  // elements (per rank for allgather and reduce_scatter)
  uint8_t dtype = 0;   // c10::ScalarType: delegated calls may use dtypes the kernels lack
  uint8_t op = 0, algo = 0, kind = 0;
  uint32_t root = 0;  // broadcast's source rank
  // The input's registered buffer on this rank (0: not registered) and its offset there. Not
  // part of the call: ranks may differ, and the path follows from every rank's (zero-copy only
  // when all are registered at the same offset).
  uint32_t reg = 0;
  uint64_t reg_offset = 0;

  bool same_call(const Header& o) const {
    return magic == o.magic && version == o.version && device == o.device && seq == o.seq && count == o.count && dtype == o.dtype && op == o.op &&
           algo == o.algo && kind == o.kind && root == o.root;
  }
  std::string describe() const {
    const Kind k = static_cast<Kind>(kind);
    std::string s = std::string(kind_name(k)) + " #" + std::to_string(seq) + " of " + std::to_string(count) + " " +
                    c10::toString(static_cast<c10::ScalarType>(dtype));
    if (k == Kind::kAllreduce || k == Kind::kReduceScatter) s += std::string(" op=") + op_name(static_cast<RedOp>(op));
    if (k == Kind::kBroadcast) s += " root=" + std::to_string(root);
    if (device != 0) s += std::string(" on ") + c10::DeviceTypeName(static_cast<c10::DeviceType>(device), true);
    return s + " algorithm=" + algo_name(static_cast<Algo>(algo));
  }
};
static_assert(sizeof(Header) == 48, "header travels as 48 raw bytes");

}  // namespace far
