// Shared-memory allgather, reduce_scatter and broadcast among the ranks of one host.
#pragma once
#include "algorithms/shm_allreduce.h"

namespace far {

// One call of the family. Tensors are laid out by group rank (as torch.distributed does).
struct FamilyJob {
  Kind kind = Kind::kAllgather;
  const char* in = nullptr;  // allgather: count; reduce_scatter: size x count; broadcast: count
  char* out = nullptr;       // allgather: size x count; reduce_scatter: count; broadcast: count (may be `in`)
  size_t count = 0;          // elements per rank (broadcast: of the message)
  DType dtype = DType::kFloat32;
  RedOp op = RedOp::kSum;  // reduce_scatter
  int divisor = 1;         // reduce_scatter with avg
  int root = 0;            // broadcast: the root's local rank
};

void shm_gather_family(ShmContext& ctx, const FamilyJob& job, const ShmOptions& o);

}  // namespace far
