// Contract of the fused purposively pruned InfoNCE operator (all backends).
//
// Notation: acc_t is float64 for float64 inputs and float32 otherwise
// (bf16/fp16/fp32 inputs all accumulate in float32): acc_type_t / acc_scalar_type
// below, the one definition of that rule (adam_ext/ops.py's fake kernel mirrors it).
//
// pruned_info_nce_fwd(q, k, queue, temperature, gamma, gamma_rows, need_wsum)
//   q, k       (B, D)  same floating dtype and device; any strides.
//   queue      (K, D)  same dtype/device; K may be 0; rows meant to be unit norm.
//                      Read in place, never copied, when it is row-major (contiguous)
//                      or a transposed view of a contiguous (D, K') buffer with K' >= K
//                      (strides (1, K'): MoCo's (dim, K) queue passed as queue.t());
//                      any other strides are copied to contiguous memory first
//                      (queue_layout below).
//   temperature  tau, finite, >= kMinTemperature (1e-4): every logit is at most 1/tau.
//   gamma        optional scalar threshold in [-1, 1] (a cosine similarity), or
//   gamma_rows   optional (B,) floating tensor, one threshold per query, any value
//                (at most one of the two; neither = no pruning).
//   need_wsum    whether to accumulate the softmax-weighted queue sum
//                (needed only for the gradient of q).
// Math (eps = 1e-12, as torch.nn.functional.normalize), all in acc_t:
//   qh = q / max(|q|, eps); kh = k / max(|k|, eps)
//   s+_b = qh_b . kh_b;  s_bi = qh_b . queue_i
//   keep_bi = (s_bi < g_b) or s_bi is not finite, when pruning; else true
//   lse_b  = log( exp(s+_b/tau) + sum_i keep_bi exp(s_bi/tau) )
// Non-finite numbers never hide: a similarity that is not a finite number (NaN,
//   or +-inf from an infinite queue entry) counts as NaN and is never pruned, so a
//   query whose s+_b or any s_bi is not finite gets loss_b = lse_b = NaN and NaN
//   gradients (every query does when a queue row is not finite: it meets them all).
//   (Without this rule a pruned NaN key gave a finite loss beside NaN gradients:
//   the pruned row still entered the weighted sum as 0 x NaN.)
// NaN threshold: a query whose gamma_rows value is NaN keeps no finite key
//   (s < NaN is false: pruned_b = K, wsum_b = 0 for finite inputs) and has
//   loss_b = lse_b = NaN, so that a bad threshold shows in the loss instead of
//   silently pruning everything; the other rows are unaffected.
// Returns
//   loss   (B,)  acc_t  lse_b - s+_b/tau, computed as log1p(sum_i keep exp((s_bi - s+_b)/tau))
//                       so that it keeps full relative precision near 0 (small tau)
//   lse    (B,)  acc_t  lse_b
//   wsum   (B, D) acc_t sum_i p_bi queue_i with p_bi = keep_bi exp(s_bi/tau - lse_b)
//                       when need_wsum, else a (0, D) tensor.
//   pruned (B,)  int64  number of i with keep_bi == false (0 without pruning)
// The B x K similarity matrix is never materialised.
//
// pruned_info_nce_bwd(grad_loss, q, k, loss, wsum, temperature, need_grad_q, need_grad_k)
//   grad_loss (B,) acc_t; loss, wsum as returned by the forward.
//   p+_b - 1 = exp(s+_b/tau - lse_b) - 1 = expm1(-loss_b)
//   dL/dqh_b = grad_loss_b * ((p+_b - 1) kh_b + wsum_b) / tau
//   dL/dkh_b = grad_loss_b * (p+_b - 1) qh_b / tau
//   then through x/max(|x|, eps): dx = (g - xh (xh.g)) / |x| if |x| > eps else g / eps.
//   All of it in acc_t (float32 for bf16/fp16 inputs), rounded once to the inputs'
//   dtype at the end: a float16 gradient is +-inf only where its true value is
//   beyond float16's range (|x| tiny: dx grows as 1/|x|), never NaN for finite rows.
//   A row whose loss is NaN (NaN threshold or non-finite inputs) gets NaN
//   gradients: expm1(-NaN) = NaN, whatever grad_loss_b is.
// Returns grad_q (B, D) in q's dtype (or (0, D) when !need_grad_q) and grad_k
// likewise.
//
// Arguments are checked by csrc/checks.h (check_forward_args /
// check_backward_args) in every backend; inputs may have any strides.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>

namespace adam_ext {

constexpr double kNormEps = 1e-12;

// The smallest temperature the operator accepts. Every logit is at most 1/tau;
// float32 similarities carry an absolute rounding error of about 6e-8, so at
// tau = 1e-4 a logit is already uncertain by ~6e-4, and below it the loss is
// rounding noise (1/tau itself overflows float32 below ~3e-39). MoCo uses 0.07
// to 0.2, CLIP clamps its learned temperature at 0.01. Mirrored in Python by
// adam_ext.ops.MIN_TEMPERATURE.
constexpr double kMinTemperature = 1e-4;

// How the kernels read a queue in place: row-major (K, D) rows with leading
// dimension ld == D, or column-major (MoCo's (D, K') buffer seen through .t():
// element (i, d) at i + d * ld, ld == K' >= K). Any other strides: a contiguous
// copy (the one case that costs K x D memory).
struct QueueLayout {
  at::Tensor tensor;  // the queue itself, or its contiguous copy
  int64_t ld;         // row stride (row-major) or column stride (column-major)
  bool col_major;
};

inline QueueLayout queue_layout(const at::Tensor& queue) {
  const int64_t K = queue.size(0), D = queue.size(1);
  if (queue.is_contiguous()) return {queue, D, false};
  if (queue.stride(0) == 1 && queue.stride(1) >= std::max<int64_t>(K, 1)) {
    return {queue, queue.stride(1), true};
  }
  return {queue.contiguous(), D, false};
}

// The accumulation type rule, defined once for every backend: float64 inputs
// accumulate in double, float32/bfloat16/float16 inputs in float. acc_type_t is
// the C++ type for a kernel's scalar_t, acc_scalar_type the dtype of the
// outputs loss, lse, wsum (and of what the backward reads). Mirrored in Python
// by adam_ext/ops.py:_acc_dtype (the fake/meta kernels).
template <typename scalar_t>
using acc_type_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline at::ScalarType acc_scalar_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pruned_info_nce_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& queue,
    double temperature, std::optional<double> gamma,
    const std::optional<at::Tensor>& gamma_rows, bool need_wsum);

std::tuple<at::Tensor, at::Tensor> pruned_info_nce_bwd_cpu(
    const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& loss, const at::Tensor& wsum, double temperature,
    bool need_grad_q, bool need_grad_k);

// CUDA backend (csrc/cuda/), compiled only with ADAM_EXT_WITH_CUDA.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pruned_info_nce_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& queue,
    double temperature, std::optional<double> gamma,
    const std::optional<at::Tensor>& gamma_rows, bool need_wsum);

std::tuple<at::Tensor, at::Tensor> pruned_info_nce_bwd_cuda(
    const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& loss, const at::Tensor& wsum, double temperature,
    bool need_grad_q, bool need_grad_k);

}  // namespace adam_ext
