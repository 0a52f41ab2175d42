#pragma once
#include "algorithms/shm_allreduce.h"

namespace far {

// Whether the cross-host stage of (op, dtype) among three or more hosts runs as the
// transport's own allreduce (two hosts always swap).
bool cross_on_collective(RedOp op, DType dtype);

// `cross` connects this rank to the ranks with the same local index on the other hosts.
void hierarchical_allreduce(ShmContext& ctx, P2P& cross, const Job& job, const ShmOptions& so,
                            const AlgoOptions& ao, const CostModel& cost, Staging& st);

}  // namespace far
