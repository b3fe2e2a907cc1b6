// Contract of the fused purposively pruned InfoNCE operator (all backends).
//
// Notation: acc_t is float64 for float64 inputs and float32 otherwise
// (bf16/fp16/fp32 inputs all accumulate in float32).
//
// pruned_info_nce_fwd(q, k, queue, temperature, gamma, gamma_rows, need_wsum)
//   q, k       (B, D)  same floating dtype and device; any strides.
//   queue      (K, D)  same dtype/device; K may be 0; rows meant to be unit norm.
//   temperature  tau > 0, finite.
//   gamma        optional scalar threshold, or
//   gamma_rows   optional (B,) floating tensor, one threshold per query
//                (at most one of the two; neither = no pruning).
//   need_wsum    whether to accumulate the softmax-weighted queue sum
//                (needed only for the gradient of q).
// Math (eps = 1e-12, as torch.nn.functional.normalize):
//   qh = q / max(|q|, eps); kh = k / max(|k|, eps)
//   s+_b = qh_b . kh_b;  s_bi = qh_b . queue_i
//   keep_bi = (s_bi < g_b)  when pruning (NaN similarity -> pruned), else true
//   lse_b  = log( exp(s+_b/tau) + sum_i keep_bi exp(s_bi/tau) )
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
// Returns grad_q (B, D) in q's dtype (or (0, D) when !need_grad_q) and grad_k
// likewise.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace adam_ext {

constexpr double kNormEps = 1e-12;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pruned_info_nce_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& queue,
    double temperature, std::optional<double> gamma,
    const std::optional<at::Tensor>& gamma_rows, bool need_wsum);

std::tuple<at::Tensor, at::Tensor> pruned_info_nce_bwd_cpu(
    const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& loss, const at::Tensor& wsum, double temperature,
    bool need_grad_q, bool need_grad_k);

}  // namespace adam_ext
