// C++ smoke test of the operators through the dispatcher, against an ATen
// composition of the same loss (no Python involved).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <iostream>
#include <optional>

int main() {
  at::manual_seed(0);
  const int64_t B = 7, K = 1000, D = 32;
  const double tau = 0.2, gamma = 0.3;
  auto q = at::randn({B, D}), k = at::randn({B, D});
  auto queue = at::randn({K, D});
  queue = queue / queue.norm(2, 1, true);

  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("adam_ext::pruned_info_nce_fwd", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                    const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                    std::optional<double>, const std::optional<at::Tensor>&, bool)>();
  auto [loss, lse, wsum, pruned] = op.call(q, k, queue, tau, gamma, std::nullopt, true);

  auto qh = q / q.norm(2, 1, true), kh = k / k.norm(2, 1, true);
  auto pos = (qh * kh).sum(1, true);
  auto neg = at::mm(qh, queue.t());
  auto removed = neg.ge(gamma);
  auto logits = at::cat({pos, neg.masked_fill(removed, -INFINITY)}, 1) / tau;
  auto expected = at::logsumexp(logits, 1) - pos.squeeze(1) / tau;

  const double err = (loss - expected).abs().max().item<double>();
  const bool counts_ok = pruned.equal(removed.sum(1));
  std::cout << "max |loss - expected| = " << err << ", counts " << (counts_ok ? "ok" : "WRONG")
            << std::endl;
  return (err < 1e-4 && counts_ok) ? 0 : 1;
}
