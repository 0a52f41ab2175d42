// AVX2 + F16C + FMA build of the SGD kernel, chosen at run time by sgd.cpp.
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#endif
#include "kernels/sgd_impl.h"

namespace far::detail {
const SgdRangeFn kSgdAvx2 = &k_sgd_range;
}
