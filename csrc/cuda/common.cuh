// Device helpers and launch constants shared by the CUDA kernels of adam_ext
// (pruned_info_nce_fwd.cu, pruned_info_nce_cuda.cu). Header-only: every
// function is a template or inline, so each translation unit gets its own copy.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "pruned_info_nce.h"

namespace adam_ext {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxGridX = 65535;  // capped grid dims; kernels loop (grid-stride)
constexpr int64_t kMaxGridY = 65535;
constexpr int kRowThreads = 256;  // row kernels: 8 warps, one row each

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------
// Small device helpers (float / double overloads).
// ---------------------------------------------------------------------------
__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
// log1p / expm1 have no fast-math intrinsic: they stay accurate under
// --use_fast_math (needed for the loss near 0 and for p+ - 1).
__device__ __forceinline__ float dev_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double dev_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float dev_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double dev_expm1(double x) { return expm1(x); }
__device__ __forceinline__ float dev_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dev_sqrt(double x) { return sqrt(x); }
// fmax ignores a NaN operand: a NaN logit never becomes the running maximum,
// it propagates through the sums instead (exp(NaN - m) = NaN).
__device__ __forceinline__ float dev_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double dev_max(double a, double b) { return fmax(a, b); }
// a * b rounded on its own: never contracted into an FMA with a later add/sub
// (the combine relies on M - xpos == 0 exactly when M is xpos).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// -inf from bit patterns (no reliance on --expt-relaxed-constexpr).
template <typename T>
__device__ __forceinline__ T neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return __int_as_float(static_cast<int>(0xff800000u));
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}

// The contract's non-finite rule (csrc/pruned_info_nce.h): a similarity that is
// not finite becomes NaN, which the kernels never prune and which then
// propagates through the sums. Tested on the bits, so that no fast-math
// assumption (--use_fast_math) can fold the tests away.
__device__ __forceinline__ bool is_nan_bits(float s) {
  return (__float_as_uint(s) & 0x7fffffffu) > 0x7f800000u;
}
__device__ __forceinline__ bool is_nan_bits(double s) {
  return (static_cast<unsigned long long>(__double_as_longlong(s)) & 0x7fffffffffffffffull) >
         0x7ff0000000000000ull;
}
__device__ __forceinline__ float finite_or_nan(float s) {
  return (__float_as_uint(s) & 0x7f800000u) == 0x7f800000u ? __int_as_float(0x7fc00000) : s;
}
__device__ __forceinline__ double finite_or_nan(double s) {
  return (static_cast<unsigned long long>(__double_as_longlong(s)) & 0x7ff0000000000000ull) ==
                 0x7ff0000000000000ull
             ? __longlong_as_double(0x7ff8000000000000ll)
             : s;
}

// exp(a - b) that is 0 for a == -inf (also when b == -inf: no -inf - -inf NaN).
template <typename T>
__device__ __forceinline__ T exp_shifted(T a, T b) {
  return a == neg_inf<T>() ? T(0) : dev_exp(a - b);
}

// Sum / max over groups of `Width` consecutive lanes: 32 is the whole warp, 16 a
// half warp (xor offsets below Width stay inside the group).
template <int Width = 32, typename V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int o = Width / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <int Width = 32, typename V>
__device__ __forceinline__ V warp_max(V v) {
#pragma unroll
  for (int o = Width / 2; o > 0; o >>= 1) v = dev_max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Block-wide all-reduce; every thread of the block must call it. `sh` holds at
// least blockDim.x / 32 values. The leading barrier protects `sh` from a
// previous call still being read.
template <typename V, bool IsMax>
__device__ __forceinline__ V block_allreduce(V v, V* sh) {
  v = IsMax ? warp_max(v) : warp_sum(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  V r = sh[0];
  for (int i = 1; i < nwarps; ++i) r = IsMax ? dev_max(r, sh[i]) : r + sh[i];
  return r;
}

template <>
__device__ __forceinline__ long long block_allreduce<long long, false>(long long v,
                                                                      long long* sh) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  long long r = sh[0];
  for (int i = 1; i < nwarps; ++i) r += sh[i];
  return r;
}

}  // namespace adam_ext
