// Baseline-ISA build of the reduction kernels (any x86-64 / other CPU).
#include "kernels/reduce_impl.h"

namespace far::detail {
const KernelTable kGenericKernels{&k_reduce_inplace, &k_reduce_many, &k_scale_div};
}
