// AVX2 + F16C + FMA build of the reduction kernels, chosen at run time by reduce.cpp.
#if defined(__x86_64__)
#pragma GCC target("avx2,fma,f16c")
#endif
#include "kernels/reduce_impl.h"

namespace far::detail {
const KernelTable kAvx2Kernels{&k_reduce_inplace, &k_reduce_many, &k_scale_div};
}
