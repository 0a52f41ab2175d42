// Baseline-ISA build of the SGD kernel (any x86-64 / other CPU).
#include "kernels/sgd_impl.h"

namespace far::detail {
const SgdRangeFn kSgdGeneric = &k_sgd_range;
}
