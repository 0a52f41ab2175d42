// The always-on description of a collective that ranks compare before any data moves.
#pragma once
#include <cstdint>
#include <string>

#include "algorithms/algorithm.h"

namespace far {

struct Header {
  uint32_t magic = 0xFA57A11Eu;
  uint32_t rank = 0;
  uint64_t seq = 0;    // collective number on this communicator
  uint64_t count = 0;  // elements
  uint8_t dtype = 0, op = 0, algo = 0, pad = 0;
  uint32_t reserved = 0;

  bool same_call(const Header& o) const {
    return magic == o.magic && seq == o.seq && count == o.count && dtype == o.dtype && op == o.op &&
           algo == o.algo;
  }
  std::string describe() const {
    return "allreduce #" + std::to_string(seq) + " of " + std::to_string(count) + " " +
           dtype_name(static_cast<DType>(dtype)) + " op=" + op_name(static_cast<RedOp>(op)) +
           " algorithm=" + algo_name(static_cast<Algo>(algo));
  }
};
static_assert(sizeof(Header) == 32, "header travels as 32 raw bytes");

}  // namespace far
