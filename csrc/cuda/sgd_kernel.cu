// Multi-tensor SGD kernel for CUDA (see sgd_kernel.h). Each block updates one chunk of one
// tensor; which chunk of which tensor is read from metadata passed by value with the launch,
// so 161 tensors take a handful of launches instead of one (or several) each.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/sgd_kernel.h"

namespace far::cuda {
namespace {

constexpr int kMaxTensors = 36;   // keeps Meta under the classic 4 KB kernel-argument limit
constexpr int kMaxBlocks = 320;
constexpr int64_t kChunk = 65536; // elements per block
constexpr int kThreads = 512;
constexpr int kILP = 4;           // elements per thread per iteration (one 8-16 byte load each)

struct Meta {
  void* param[kMaxTensors];
  const void* grad[kMaxTensors];
  void* buf[kMaxTensors];
  int64_t numel[kMaxTensors];
  unsigned char init[kMaxTensors];
  unsigned char aligned[kMaxTensors];
  unsigned char block_tensor[kMaxBlocks];
  int block_chunk[kMaxBlocks];
};
static_assert(sizeof(Meta) + 128 < 4096, "kernel arguments too large");

template <typename C>
struct Coefs {
  C sign, wd, m, damp1, neg_lr, lr, mu_scaled, lr_damp1;
  bool has_wd, has_mom, nesterov, lr_in_mom;
};

// Storage type S <-> compute type C (float for the 16-bit types).
template <typename S> struct IO;
template <> struct IO<float> {
  using C = float;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};
template <> struct IO<double> {
  using C = double;
  static __device__ __forceinline__ double load(double v) { return v; }
  static __device__ __forceinline__ double store(double v) { return v; }
};
template <> struct IO<__half> {
  using C = float;
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <> struct IO<__nv_bfloat16> {
  using C = float;
  static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

__device__ __forceinline__ float fma_c(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_c(double a, double b, double c) { return fma(a, b, c); }

// One element; same operation order as the CPU kernel (kernels/sgd_impl.h).
template <typename S, typename C = typename IO<S>::C>
__device__ __forceinline__ void update(S& p, S g_in, S& b, bool init, const Coefs<C>& k) {
  const C w = IO<S>::load(p);
  C g = IO<S>::load(g_in) * k.sign;
  if (k.has_wd) g = fma_c(w, k.wd, g);
  C out;
  if (!k.has_mom) {
    out = fma_c(g, k.neg_lr, w);
  } else if (!k.lr_in_mom) {
    const C v = init ? g : fma_c(g, k.damp1, IO<S>::load(b) * k.m);
    b = IO<S>::store(v);
    out = fma_c(k.nesterov ? fma_c(v, k.m, g) : v, k.neg_lr, w);
  } else {
    const C u = init ? k.lr * g : fma_c(g, k.lr_damp1, IO<S>::load(b) * k.mu_scaled);
    b = IO<S>::store(u);
    out = w - (k.nesterov ? fma_c(u, k.m, k.lr * g) : u);
  }
  p = IO<S>::store(out);
}

template <typename S>
struct alignas(sizeof(S) * kILP) Pack { S v[kILP]; };

template <typename S, typename C>
__global__ void __launch_bounds__(kThreads) sgd_kernel(Meta meta, Coefs<C> k) {
  const int t = meta.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(meta.block_chunk[blockIdx.x]) * kChunk;
  const int64_t rest = meta.numel[t] - begin;
  const int64_t len = rest < kChunk ? rest : kChunk;
  S* __restrict__ p = static_cast<S*>(meta.param[t]) + begin;
  const S* __restrict__ g = static_cast<const S*>(meta.grad[t]) + begin;
  S* __restrict__ b = k.has_mom ? static_cast<S*>(meta.buf[t]) + begin : nullptr;
  const bool init = meta.init[t];
  S dummy{};

  int64_t done = 0;
  if (meta.aligned[t]) {  // vector loads: every pointer is aligned to a whole Pack
    const int64_t packs = len / kILP;
    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
      Pack<S> pp = reinterpret_cast<Pack<S>*>(p)[i];
      const Pack<S> gp = reinterpret_cast<const Pack<S>*>(g)[i];
      Pack<S> bp;
      if (k.has_mom && !init) bp = reinterpret_cast<Pack<S>*>(b)[i];
#pragma unroll
      for (int j = 0; j < kILP; ++j) update<S, C>(pp.v[j], gp.v[j], bp.v[j], init, k);
      reinterpret_cast<Pack<S>*>(p)[i] = pp;
      if (k.has_mom) reinterpret_cast<Pack<S>*>(b)[i] = bp;
    }
    done = packs * kILP;
  }
  for (int64_t i = done + threadIdx.x; i < len; i += blockDim.x) {
    S bv = dummy;
    if (k.has_mom && !init) bv = b[i];
    S pv = p[i];
    update<S, C>(pv, g[i], bv, init, k);
    p[i] = pv;
    if (k.has_mom) b[i] = bv;
  }
}

template <typename C>
Coefs<C> make_coefs(const SgdParams& p) {
  Coefs<C> k;
  k.sign = p.maximize ? C(-1) : C(1);
  k.wd = static_cast<C>(p.weight_decay);
  k.m = static_cast<C>(p.momentum);
  k.damp1 = static_cast<C>(1.0 - p.dampening);
  k.neg_lr = static_cast<C>(-p.lr);
  k.lr = static_cast<C>(p.lr);
  k.mu_scaled = static_cast<C>(p.momentum * p.momentum_scale);
  k.lr_damp1 = static_cast<C>((1.0 - p.dampening) * p.lr);
  k.has_wd = p.weight_decay != 0;
  k.has_mom = p.momentum != 0;
  k.nesterov = p.nesterov;
  k.lr_in_mom = p.form == SgdForm::kLrInMomentum;
  return k;
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("fastallreduce: SGD CUDA kernel: ") + what + ": " + cudaGetErrorString(e));
}

bool is_aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Packs the tensors of one dtype into as few launches as the metadata allows.
template <typename S>
void launch_all(const SgdTensor* tensors, size_t count, DType dtype, const SgdParams& params, cudaStream_t stream) {
  using C = typename IO<S>::C;
  const Coefs<C> k = make_coefs<C>(params);
  Meta meta;
  int nt = 0, nb = 0;
  auto flush = [&] {
    if (nb == 0) return;
    sgd_kernel<S, C><<<nb, kThreads, 0, stream>>>(meta, k);
    check(cudaGetLastError(), "launch");
  };
  for (size_t i = 0; i < count; ++i) {
    const SgdTensor& t = tensors[i];
    if (t.dtype != dtype || t.numel == 0) continue;
    if (nt == kMaxTensors) { flush(); nt = nb = 0; }
    const size_t pack = sizeof(S) * kILP;
    meta.param[nt] = t.param;
    meta.grad[nt] = t.grad;
    meta.buf[nt] = t.buf;
    meta.numel[nt] = t.numel;
    meta.init[nt] = t.init_buf;
    meta.aligned[nt] = is_aligned(t.param, pack) && is_aligned(t.grad, pack) && (t.buf == nullptr || is_aligned(t.buf, pack));
    const int64_t chunks = (t.numel + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      if (nb == kMaxBlocks) {
        flush();
        // The tensor being split carries over as entry 0 of the next launch.
        meta.param[0] = meta.param[nt]; meta.grad[0] = meta.grad[nt]; meta.buf[0] = meta.buf[nt];
        meta.numel[0] = meta.numel[nt]; meta.init[0] = meta.init[nt]; meta.aligned[0] = meta.aligned[nt];
        nt = 0;
        nb = 0;
      }
      meta.block_tensor[nb] = static_cast<unsigned char>(nt);
      meta.block_chunk[nb] = static_cast<int>(c);
      ++nb;
    }
    ++nt;
  }
  flush();
}

}  // namespace

void sgd_step_cuda(const SgdTensor* tensors, size_t count, const SgdParams& params, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  bool seen[4] = {false, false, false, false};
  for (size_t i = 0; i < count; ++i) {
    switch (tensors[i].dtype) {
      case DType::kFloat32: seen[0] = true; break;
      case DType::kFloat64: seen[1] = true; break;
      case DType::kFloat16: seen[2] = true; break;
      case DType::kBFloat16: seen[3] = true; break;
      default: throw std::invalid_argument("fastallreduce: SGD CUDA kernel: unsupported dtype");
    }
  }
  if (seen[0]) launch_all<float>(tensors, count, DType::kFloat32, params, stream);
  if (seen[1]) launch_all<double>(tensors, count, DType::kFloat64, params, stream);
  if (seen[2]) launch_all<__half>(tensors, count, DType::kFloat16, params, stream);
  if (seen[3]) launch_all<__nv_bfloat16>(tensors, count, DType::kBFloat16, params, stream);
}

}  // namespace far::cuda
