// Operator schemas of adam_ext, declared once; the kernels live in cpu/ and
// cuda/ and register themselves with TORCH_LIBRARY_IMPL. Autograd and the
// fake (meta) implementations are registered from Python (adam_ext/ops.py).
#include <torch/library.h>

TORCH_LIBRARY(adam_ext, m) {
  // Fused purposively pruned InfoNCE, forward. See csrc/pruned_info_nce.h for
  // the exact contract (shapes, dtypes, semantics of every output).
  m.def(
      "pruned_info_nce_fwd(Tensor q, Tensor k, Tensor queue, float temperature, "
      "float? gamma, Tensor? gamma_rows, bool need_wsum) "
      "-> (Tensor loss, Tensor lse, Tensor wsum, Tensor pruned)");
  // Its backward: O(B*D), never reads the queue.
  m.def(
      "pruned_info_nce_bwd(Tensor grad_loss, Tensor q, Tensor k, Tensor loss, "
      "Tensor wsum, float temperature, bool need_grad_q, bool need_grad_k) "
      "-> (Tensor grad_q, Tensor grad_k)");
}

// Build configuration, read by adam_ext.build_info(). A catch-all op (no
// tensor arguments) so that it needs no Python headers in the C++ sources.
#ifndef ADAM_EXT_CUDA_ARCHS
#define ADAM_EXT_CUDA_ARCHS ""
#endif

TORCH_LIBRARY_FRAGMENT(adam_ext, m) {
  m.def("_build_info() -> str", []() -> std::string {
#ifdef ADAM_EXT_WITH_CUDA
    const std::string cuda = "1";
#else
    const std::string cuda = "0";
#endif
    return "cuda=" + cuda + "|cuda_archs=" + ADAM_EXT_CUDA_ARCHS;
  });
}
