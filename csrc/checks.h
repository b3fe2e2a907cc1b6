// Argument checks shared by every backend of the adam_ext operators.
//
// Each check names the argument, what was expected and what came, so that a
// user calling torch.ops.adam_ext.* directly (bypassing the Python wrapper)
// still gets an actionable message instead of a crash inside a kernel.
#pragma once

#include <ATen/ATen.h>

#include "pruned_info_nce.h"

#include <cmath>
#include <optional>
#include <utility>

#define ADAM_CHECK_ARG(cond, name, ...) \
  TORCH_CHECK_VALUE(cond, "adam_ext: ", name, " ", __VA_ARGS__)

namespace adam_ext {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 ||
         t == at::kHalf;
}

// A finite temperature >= kMinTemperature (1/temperature scales every logit).
inline void check_temperature(double temperature) {
  ADAM_CHECK_ARG(std::isfinite(temperature) && temperature >= kMinTemperature, "temperature",
                 "must be a finite number >= ", kMinTemperature, " (every logit is at most ",
                 "1/temperature), got ", temperature);
}

// q of a supported floating dtype and k of the same: shared by both operators.
inline void check_qk_dtypes(const at::Tensor& q, const at::Tensor& k) {
  ADAM_CHECK_ARG(is_supported_float(q.scalar_type()), "q",
                 "must be float32, float64, bfloat16 or float16, got ",
                 q.scalar_type());
  ADAM_CHECK_ARG(k.scalar_type() == q.scalar_type(), "k",
                 "must have the dtype of q (", q.scalar_type(), "), got ",
                 k.scalar_type());
}

// Validates the forward operator's arguments; returns nothing, throws a
// c10::ValueError naming the offending argument otherwise. Order: the ranks of
// q, k, queue (before any size is read), their shapes, dtypes, devices, the
// temperature, then gamma / gamma_rows. No stride is assumed: kernels copy q
// and k to contiguous memory (O(B * D)) and read the queue through
// queue_layout (pruned_info_nce.h). Backend limits (e.g. D <= 256 on CUDA) are
// checked by the backend.
inline void check_forward_args(const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& queue, double temperature,
                               const std::optional<double>& gamma,
                               const std::optional<at::Tensor>& gamma_rows) {
  ADAM_CHECK_ARG(q.dim() == 2, "q", "must be (B, D), got ", q.dim(),
                 "-d tensor of shape ", q.sizes());
  ADAM_CHECK_ARG(k.dim() == 2, "k", "must be (B, D), got ", k.dim(),
                 "-d tensor of shape ", k.sizes());
  ADAM_CHECK_ARG(queue.dim() == 2, "queue", "must be (K, D), got ", queue.dim(),
                 "-d tensor of shape ", queue.sizes());
  const auto B = q.size(0);
  const auto D = q.size(1);
  ADAM_CHECK_ARG(B >= 1, "q", "must hold at least one query (B >= 1), got shape ",
                 q.sizes());
  ADAM_CHECK_ARG(D >= 1, "q", "must have a feature dimension D >= 1, got shape ",
                 q.sizes());
  ADAM_CHECK_ARG(k.sizes() == q.sizes(), "k", "must be (B, D) = ", q.sizes(),
                 " like q, got ", k.sizes());
  ADAM_CHECK_ARG(queue.size(1) == D, "queue", "must be (K, D) with D=", D,
                 " like q, got ", queue.sizes(),
                 queue.size(0) == D ? " (did you pass the queue transposed, as (D, K)?)"
                                    : "");
  check_qk_dtypes(q, k);
  ADAM_CHECK_ARG(queue.scalar_type() == q.scalar_type(), "queue",
                 "must have the dtype of q (", q.scalar_type(), "), got ",
                 queue.scalar_type());
  ADAM_CHECK_ARG(k.device() == q.device(), "k", "must be on the device of q (",
                 q.device(), "), got ", k.device());
  ADAM_CHECK_ARG(queue.device() == q.device(), "queue",
                 "must be on the device of q (", q.device(), "), got ",
                 queue.device());
  check_temperature(temperature);
  ADAM_CHECK_ARG(!(gamma.has_value() && gamma_rows.has_value()), "gamma",
                 "must be given either as a number or as a (B,) tensor, not both");
  if (gamma.has_value()) {
    ADAM_CHECK_ARG(*gamma >= -1.0 && *gamma <= 1.0, "gamma",
                   "must be in [-1, 1] (a cosine similarity), or None to disable pruning, got ",
                   *gamma);
  }
  if (gamma_rows.has_value()) {
    const auto& g = *gamma_rows;
    ADAM_CHECK_ARG(g.dim() == 1 && g.size(0) == B, "gamma",
                   "given as a tensor must be (B,) = (", B, ",), got shape ",
                   g.sizes());
    ADAM_CHECK_ARG(at::isFloatingType(g.scalar_type()), "gamma",
                   "given as a tensor must be floating point, got ",
                   g.scalar_type());
    ADAM_CHECK_ARG(g.device() == q.device(), "gamma",
                   "must be on the device of q (", q.device(), "), got ",
                   g.device());
  }
}

// Validates the backward operator's arguments, in this order: the rank of q
// (before any size of q is read), the shapes of k, grad_loss, loss and wsum
// against q's (B, D), then dtypes, devices and the temperature. Kernels make
// their own contiguous copies of these O(B * D) tensors: no stride is assumed. wsum is read only when
// need_grad_q (the forward with need_wsum=False returns a (0, D) wsum).
inline void check_backward_args(const at::Tensor& grad_loss, const at::Tensor& q,
                                const at::Tensor& k, const at::Tensor& loss,
                                const at::Tensor& wsum, double temperature,
                                bool need_grad_q) {
  ADAM_CHECK_ARG(q.dim() == 2, "q", "must be (B, D), got ", q.dim(),
                 "-d tensor of shape ", q.sizes());
  const auto B = q.size(0);
  ADAM_CHECK_ARG(k.sizes() == q.sizes(), "k", "must be (B, D) = ", q.sizes(),
                 " like q, got ", k.sizes());
  ADAM_CHECK_ARG(grad_loss.dim() == 1 && grad_loss.size(0) == B, "grad_loss",
                 "must be (B,) = (", B, ",), got ", grad_loss.sizes());
  ADAM_CHECK_ARG(loss.dim() == 1 && loss.size(0) == B, "loss", "must be (B,) = (",
                 B, ",), got ", loss.sizes());
  if (need_grad_q) {
    ADAM_CHECK_ARG(wsum.sizes() == q.sizes(), "wsum",
                   "must be (B, D) = ", q.sizes(),
                   " when the gradient of q is needed (run the forward with "
                   "need_wsum=True), got ",
                   wsum.sizes());
  }
  check_qk_dtypes(q, k);
  ADAM_CHECK_ARG(at::isFloatingType(grad_loss.scalar_type()), "grad_loss",
                 "must be floating point, got ", grad_loss.scalar_type());
  ADAM_CHECK_ARG(at::isFloatingType(loss.scalar_type()), "loss",
                 "must be floating point (the forward's loss rows), got ",
                 loss.scalar_type());
  ADAM_CHECK_ARG(!need_grad_q || at::isFloatingType(wsum.scalar_type()), "wsum",
                 "must be floating point (the forward's weighted sums), got ",
                 wsum.scalar_type());
  const std::pair<const char*, const at::Tensor*> others[] = {
      {"k", &k}, {"grad_loss", &grad_loss}, {"loss", &loss}, {"wsum", &wsum}};
  for (const auto& [name, t] : others) {
    ADAM_CHECK_ARG(t->device() == q.device(), name, "must be on the device of q (",
                   q.device(), "), got ", t->device());
  }
  check_temperature(temperature);
}

}  // namespace adam_ext
