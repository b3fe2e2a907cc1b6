// CUDA backend of the fused purposively pruned InfoNCE operator: the backward
// and the registration of both CUDA kernels (the forward is in
// pruned_info_nce_fwd.cu; shared device helpers in common.cuh).
// The contract (math, shapes, dtypes) is in csrc/pruned_info_nce.h.
//
// Backward: one warp per row, O(B*D), recomputes qhat, khat and s+; takes
// p+ - 1 = expm1(-loss) from the forward's loss.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "checks.h"
#include "common.cuh"
#include "pruned_info_nce.h"

namespace adam_ext {
namespace {

// ---------------------------------------------------------------------------
// Backward: one warp per row. p+ - 1 = expm1(-loss) (the forward's loss).
// ---------------------------------------------------------------------------
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    bwd_kernel(const acc_t* __restrict__ grad_loss, const T* __restrict__ q,
               const T* __restrict__ k, const acc_t* __restrict__ loss,
               const acc_t* __restrict__ wsum, int64_t B, int D, acc_t inv_tau,
               bool need_gq, bool need_gk, T* __restrict__ gq, T* __restrict__ gk) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_block = kRowThreads / 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * warps_per_block;
  const acc_t eps = static_cast<acc_t>(kNormEps);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps_per_block + (threadIdx.x >> 5);
       row < B; row += stride) {
    const T* qr = q + row * D;
    const T* kr = k + row * D;
    const acc_t* wr = need_gq ? wsum + row * D : nullptr;
    acc_t qq = 0, kk = 0, qk = 0, qw = 0;
    for (int d = lane; d < D; d += 32) {
      const acc_t qv = static_cast<acc_t>(qr[d]);
      const acc_t kv = static_cast<acc_t>(kr[d]);
      qq += qv * qv;
      kk += kv * kv;
      qk += qv * kv;
      if (need_gq) qw += qv * wr[d];
    }
    qq = warp_sum(qq);
    kk = warp_sum(kk);
    qk = warp_sum(qk);
    qw = warp_sum(qw);
    const acc_t nq = dev_sqrt(qq), nk = dev_sqrt(kk);
    // iq = 1/max(|q|, eps): the normalisation's scale and, in both branches of
    // dx = (g - xh (xh.g)) / |x|  or  g / eps, the final factor.
    const acc_t iq = acc_t(1) / dev_max(nq, eps);
    const acc_t ik = acc_t(1) / dev_max(nk, eps);
    const bool proj_q = nq > eps, proj_k = nk > eps;
    const acc_t sp = qk * iq * ik;  // s+ = qh . kh
    const acc_t c = grad_loss[row] * inv_tau;
    const acc_t a = c * dev_expm1(-loss[row]);  // c (p+ - 1), accurate for small loss
    // g_q = a kh + c w  -> qh.g_q = a s+ + c (qh.w);  g_k = a qh -> kh.g_k = a s+
    const acc_t qg = proj_q ? a * sp + c * qw * iq : acc_t(0);
    const acc_t kg = proj_k ? a * sp : acc_t(0);
    for (int d = lane; d < D; d += 32) {
      const acc_t qh = static_cast<acc_t>(qr[d]) * iq;
      const acc_t kh = static_cast<acc_t>(kr[d]) * ik;
      if (need_gq) gq[row * D + d] = static_cast<T>((a * kh + c * wr[d] - qh * qg) * iq);
      if (need_gk) gk[row * D + d] = static_cast<T>((a * qh - kh * kg) * ik);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pruned_info_nce_bwd_cuda(
    const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& k, const at::Tensor& loss,
    const at::Tensor& wsum, double temperature, bool need_grad_q, bool need_grad_k) {
  check_backward_args(grad_loss, q, k, loss, wsum, temperature, need_grad_q);
  TORCH_CHECK(q.is_cuda(), "adam_ext: q must be a CUDA tensor for the CUDA kernel, got ",
              q.device());
  const at::cuda::OptionalCUDAGuard guard(q.device());

  const int64_t B = q.size(0);
  const int64_t D = q.size(1);
  TORCH_CHECK(D <= std::numeric_limits<int>::max(), "adam_ext: q has too many columns: ", D);
  at::Tensor gq = at::empty({need_grad_q ? B : 0, D}, q.options());
  at::Tensor gk = at::empty({need_grad_k ? B : 0, D}, q.options());
  if (B == 0 || D == 0 || (!need_grad_q && !need_grad_k)) return {gq, gk};

  const auto acc_type = acc_scalar_type(q.scalar_type());
  const at::Tensor qc = q.contiguous();
  const at::Tensor kc = k.contiguous();
  const at::Tensor glc = grad_loss.to(acc_type).contiguous();
  const at::Tensor lossc = loss.to(acc_type).contiguous();
  const at::Tensor wc = need_grad_q ? wsum.to(acc_type).contiguous() : at::Tensor();
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t blocks = std::min(ceil_div(B, kRowThreads / 32), kMaxGridX);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "pruned_info_nce_bwd_cuda", [&] {
        using acc_t = acc_type_t<scalar_t>;
        bwd_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(
            glc.data_ptr<acc_t>(), qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(),
            lossc.data_ptr<acc_t>(), need_grad_q ? wc.data_ptr<acc_t>() : nullptr, B,
            static_cast<int>(D), static_cast<acc_t>(1.0 / temperature), need_grad_q, need_grad_k,
            need_grad_q ? gq.data_ptr<scalar_t>() : nullptr,
            need_grad_k ? gk.data_ptr<scalar_t>() : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {gq, gk};
}

TORCH_LIBRARY_IMPL(adam_ext, CUDA, m) {
  m.impl("pruned_info_nce_fwd", &pruned_info_nce_fwd_cuda);
  m.impl("pruned_info_nce_bwd", &pruned_info_nce_bwd_cuda);
}

}  // namespace adam_ext
