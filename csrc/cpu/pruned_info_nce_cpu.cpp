// CPU kernels of the fused purposively pruned InfoNCE operator.
//
// Forward, one pass over the queue: the queue is cut into tiles of kTileK rows
// and the tiles are shared among threads (at::parallel_for). For a tile and a
// block of up to kTileB queries, the similarities S = qh . tile^T are made by
// BLAS into a small per-thread buffer that stays in L2, then one fused pass
// masks, exponentiates and sums them (online log-sum-exp with flash-attention
// rescaling) and leaves the probabilities P in place, and BLAS adds P . tile to
// the thread's weighted-sum accumulator. Threads' partial (max, sum, acc) are
// merged at the end. Memory is O(threads * (B * D + kTileB * kTileK)), never
// O(B * K). The backward is O(B * D) and never reads the queue.
//
// The queue is read in place in both layouts of queue_layout (pruned_info_nce.h):
// row-major (K, D) tiles are B^T operands of the two products, MoCo's (D, K)
// buffer seen through .t() gives column-major tiles, the same products with the
// other transpose flag. No K x D copy in either case: column-major tiles (and
// bf16/fp16 tiles, converted to acc_t) go through a per-thread tile buffer
// (kTileK x D) of the same layout.
#include "checks.h"
#include "pruned_info_nce.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

// Fortran BLAS exported by libtorch_cpu's MKL. Declared weak so that a torch
// built on another BLAS still loads the extension; we then use at::mm instead.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
            const int* k, const float* alpha, const float* a, const int* lda,
            const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n,
            const int* k, const double* alpha, const double* a, const int* lda,
            const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace adam_ext {
namespace {

// Tile sizes. A tile of 256 queue rows (128 KiB at D=128, fp32) against a
// block of 256 queries gives 256 KiB of similarities and 256 KiB of
// probabilities: with the tile and the block's accumulator, 768 KiB, within the
// 1 MiB L2 per core of the 2-core AMD EPYC this was tuned on. Measured there at
// B=256, K=65536, D=128, forward+backward, 2 threads: 256x256 61-68 ms,
// 256x128 65-67 ms, 512x128 61-72 ms, 128x256 65-72 ms (noise ~5 ms).
constexpr int64_t kTileK = 256;
constexpr int64_t kTileB = 256;

// Row-major C[m x n] (+)= A[m x k] . B^T where B is [n x k] (trans_b) or
// C[m x n] (+)= A[m x k] . B[k x n]; all contiguous with the given leading dims.
// Expressed for column-major BLAS as C^T = op(B) . A^T.
template <typename acc_t>
void gemm_rowmajor(bool trans_b, int64_t m, int64_t n, int64_t k, const acc_t* a,
                   int64_t lda, const acc_t* b, int64_t ldb, acc_t beta, acc_t* c,
                   int64_t ldc) {
  const char tb = trans_b ? 'T' : 'N';
  const char ta = 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDB = static_cast<int>(ldb), LDA = static_cast<int>(lda),
            LDC = static_cast<int>(ldc);
  const acc_t one = 1;
  if constexpr (std::is_same_v<acc_t, float>) {
    if (sgemm_ != nullptr) {
      sgemm_(&tb, &ta, &M, &N, &K, &one, b, &LDB, a, &LDA, &beta, c, &LDC);
      return;
    }
  } else {
    if (dgemm_ != nullptr) {
      dgemm_(&tb, &ta, &M, &N, &K, &one, b, &LDB, a, &LDA, &beta, c, &LDC);
      return;
    }
  }
  // Fallback through ATen on views of the raw buffers.
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  auto A = at::from_blob(const_cast<acc_t*>(a), {m, k}, {lda, 1}, opts);
  auto Bm = trans_b ? at::from_blob(const_cast<acc_t*>(b), {n, k}, {ldb, 1}, opts).t()
                    : at::from_blob(const_cast<acc_t*>(b), {k, n}, {ldb, 1}, opts);
  auto C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (beta == acc_t(0)) {
    at::mm_out(C, A, Bm);
  } else {
    C.addmm_(A, Bm);
  }
}

// ---------------------------------------------------------------------------
// Row kernels: one query row against one tile of similarities s[0..n).
//
// A similarity that is not finite is first made NaN (finite_or_nan); then
// z_j = keep_j ? s_j / tau : -inf  with keep_j = (s_j < gamma or s_j is NaN)
// when pruning and keep_j = true otherwise: a NaN is never pruned, it propagates
// into the row's sum and loss (the contract's rule: non-finite never hides; the
// official loop pruned it, which left 0 x NaN in the gradient).
//
// scan_max: max_j z_j (NaNs ignored), the number kept, whether a kept z is NaN.
// exp_pass: p_j = exp(z_j - shift) into p, returns sum_j p_j, and also max_j z_j
//           and the number kept; requires z_j - shift <= 88 (no overflow).
// Each has a portable version (auto-vectorised where the compiler can) and an
// AVX2/FMA version for float chosen at run time.

// exp(x) for x <= 88 (below -87 -> 0, NaN -> NaN): Cody-Waite reduction to
// r in [-ln2/2, ln2/2], a degree-6 Taylor polynomial (relative error < 1.3e-7,
// about one float ulp), and 2^n put into the exponent bits.
inline float exp_approx(float x) {
  const bool is_nan = x != x;
  const float xc = x < -87.0f ? -87.0f : (is_nan ? 0.0f : x);
  const float fn = std::nearbyint(xc * 1.44269504088896341f);
  const float r = (xc - fn * 0.693359375f) + fn * 2.12194440e-4f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return is_nan ? x : (x < -87.0f ? 0.0f : p * scale);
}

inline double exp_approx(double x) { return std::exp(x); }

template <typename acc_t>
inline acc_t finite_or_nan(acc_t s) {
  return std::abs(s) <= std::numeric_limits<acc_t>::max() ? s
                                                          : std::numeric_limits<acc_t>::quiet_NaN();
}

// keep_j of the comment above, for a similarity already through finite_or_nan.
template <typename acc_t>
inline bool keeps(acc_t s, acc_t g, bool prune) {
  return !prune || s < g || s != s;
}

template <typename acc_t>
acc_t scan_max_generic(const acc_t* s, int64_t n, acc_t inv_tau, acc_t g, bool prune,
                       int64_t& kept, bool& any_nan) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  acc_t mx = kNegInf;
  int64_t k = 0;
  bool nan = false;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t sj = finite_or_nan(s[j]);
    const bool keep = keeps(sj, g, prune);
    const acc_t z = keep ? sj * inv_tau : kNegInf;
    k += keep;
    nan |= z != z;
    mx = z > mx ? z : mx;
  }
  kept = k;
  any_nan = nan;
  return mx;
}

template <typename acc_t>
acc_t exp_pass_generic(const acc_t* s, acc_t* p, int64_t n, acc_t inv_tau, acc_t g, bool prune,
                       acc_t shift, acc_t& tile_max, int64_t& kept) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  acc_t mx = kNegInf, sum = 0;
  int64_t k = 0;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t sj = finite_or_nan(s[j]);
    const bool keep = keeps(sj, g, prune);
    const acc_t z = keep ? sj * inv_tau : kNegInf;
    k += keep;
    mx = z > mx ? z : mx;
    const acc_t e = exp_approx(z - shift);
    p[j] = e;
    sum += e;
  }
  tile_max = mx;
  kept = k;
  return sum;
}

#if defined(__GNUC__) && defined(__x86_64__)
#define ADAM_EXT_AVX2 1
#define ADAM_AVX2 __attribute__((target("avx2,fma")))

ADAM_AVX2 inline __m256 exp256(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f);
  const __m256 xc = _mm256_max_ps(lo, x);  // NaN stays NaN (max_ps returns its 2nd operand)
  const __m256 fn = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fmadd_ps(fn, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fn), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
}

ADAM_AVX2 inline float hmax256(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

ADAM_AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// z for 8 lanes; counts kept lanes into *kept when pruning. A lane that is not
// finite (|s| > FLT_MAX or NaN) becomes NaN (all bits set) and is kept.
ADAM_AVX2 inline __m256 logits8(__m256 sv, __m256 inv_tau, __m256 g, bool prune, int64_t& kept) {
  const __m256 magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), sv);
  const __m256 bad = _mm256_cmp_ps(magnitude, _mm256_set1_ps(std::numeric_limits<float>::max()),
                                   _CMP_NLE_UQ);
  sv = _mm256_or_ps(sv, bad);
  const __m256 z = _mm256_mul_ps(sv, inv_tau);
  if (!prune) return z;
  const __m256 keep = _mm256_or_ps(_mm256_cmp_ps(sv, g, _CMP_LT_OQ), bad);
  kept += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(keep)));
  return _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), z, keep);
}

ADAM_AVX2 float scan_max_avx2(const float* s, int64_t n, float inv_tau, float g, bool prune,
                              int64_t& kept, bool& any_nan) {
  const __m256 vt = _mm256_set1_ps(inv_tau), vg = _mm256_set1_ps(g);
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 vnan = _mm256_setzero_ps();
  int64_t k = 0, j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 z = logits8(_mm256_loadu_ps(s + j), vt, vg, prune, k);
    vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(z, z, _CMP_UNORD_Q));
    vmax = _mm256_max_ps(z, vmax);  // a NaN z leaves vmax unchanged
  }
  int64_t k_tail;
  bool nan_tail;
  const float m_tail = scan_max_generic<float>(s + j, n - j, inv_tau, g, prune, k_tail, nan_tail);
  kept = (prune ? k : j) + k_tail;
  any_nan = nan_tail || _mm256_movemask_ps(vnan) != 0;
  return std::max(hmax256(vmax), m_tail);
}

ADAM_AVX2 float exp_pass_avx2(const float* s, float* p, int64_t n, float inv_tau, float g,
                              bool prune, float shift, float& tile_max, int64_t& kept) {
  const __m256 vt = _mm256_set1_ps(inv_tau), vg = _mm256_set1_ps(g), vs = _mm256_set1_ps(shift);
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 vsum = _mm256_setzero_ps();
  int64_t k = 0, j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 z = logits8(_mm256_loadu_ps(s + j), vt, vg, prune, k);
    vmax = _mm256_max_ps(z, vmax);
    const __m256 e = exp256(_mm256_sub_ps(z, vs));
    _mm256_storeu_ps(p + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float m_tail;
  int64_t k_tail;
  const float sum_tail = exp_pass_generic<float>(s + j, p + j, n - j, inv_tau, g, prune, shift, m_tail, k_tail);
  kept = (prune ? k : j) + k_tail;
  tile_max = std::max(hmax256(vmax), m_tail);
  return hsum256(vsum) + sum_tail;
}
#endif

template <typename acc_t>
struct RowKernels {
  acc_t (*scan_max)(const acc_t*, int64_t, acc_t, acc_t, bool, int64_t&, bool&);
  acc_t (*exp_pass)(const acc_t*, acc_t*, int64_t, acc_t, acc_t, bool, acc_t, acc_t&, int64_t&);
};

template <typename acc_t>
RowKernels<acc_t> row_kernels() {
  if constexpr (std::is_same_v<acc_t, float>) {
#ifdef ADAM_EXT_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return {scan_max_avx2, exp_pass_avx2};
    }
#endif
  }
  return {scan_max_generic<acc_t>, exp_pass_generic<acc_t>};
}

// How far above the current shift a tile's largest logit may be before the
// tile is redone with a new shift: exp(60) * K stays far from float overflow.
constexpr double kShiftSlack = 60.0;

// Adds one tile of similarities s[0..n) to a row's running (shift m, sum l,
// pruned count), writing p_j = exp(z_j - m) into p for the weighted key sum.
// The shift m is a logit already seen, at most kShiftSlack below the largest,
// so the common case is one pass with no rescaling (for unit-norm rows every
// logit is within 2/tau of the first tile's maximum).
// Returns the factor by which the caller must rescale the row's accumulator.
template <typename acc_t>
acc_t row_update(const RowKernels<acc_t>& kern, const acc_t* s, acc_t* p, int64_t n,
                 acc_t inv_tau, acc_t g, bool prune, acc_t& m, acc_t& l, int64_t& pruned) {
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  int64_t kept;
  acc_t tile_max;
  if (m == kNegInf) {  // no key kept yet in this row: take this tile's maximum as shift
    bool any_nan;
    tile_max = kern.scan_max(s, n, inv_tau, g, prune, kept, any_nan);
    pruned += n - kept;
    if (tile_max == kNegInf && !any_nan) {
      std::fill(p, p + n, acc_t(0));
      return acc_t(1);
    }
    m = any_nan ? std::numeric_limits<acc_t>::quiet_NaN() : tile_max;
    l = kern.exp_pass(s, p, n, inv_tau, g, prune, m, tile_max, kept);
    return acc_t(1);  // the accumulator of this row is still zero
  }
  const acc_t sum = kern.exp_pass(s, p, n, inv_tau, g, prune, m, tile_max, kept);
  pruned += n - kept;
  if (!(tile_max > m + acc_t(kShiftSlack))) {
    l += sum;
    return acc_t(1);
  }
  // Rare: a logit far above the shift (rows far from unit norm, tiny tau).
  const acc_t scale = std::exp(m - tile_max);
  m = tile_max;
  l = l * scale + kern.exp_pass(s, p, n, inv_tau, g, prune, m, tile_max, kept);
  return scale;
}

// Normalises the rows of x (B, D) into out (B, D) of acc_t; returns norms if asked.
template <typename scalar_t, typename acc_t>
void normalize_rows(const scalar_t* x, int64_t B, int64_t D, acc_t* out) {
  at::parallel_for(0, B, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const scalar_t* xr = x + b * D;
      acc_t* o = out + b * D;
      acc_t ss = 0;
      for (int64_t d = 0; d < D; ++d) {
        const acc_t v = static_cast<acc_t>(xr[d]);
        o[d] = v;
        ss += v * v;
      }
      const acc_t inv = acc_t(1) / std::max(std::sqrt(ss), acc_t(kNormEps));
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  });
}

// Per-thread partial state of the forward pass.
template <typename acc_t>
struct Partial {
  std::vector<acc_t> m, l, acc, sbuf, pbuf, tile;
  std::vector<int64_t> pruned;
  bool used = false;
};

template <typename scalar_t>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const QueueLayout& layout,
                  double temperature, std::optional<double> gamma,
                  const std::optional<at::Tensor>& gamma_rows, bool need_wsum,
                  at::Tensor& loss, at::Tensor& lse, at::Tensor& wsum,
                  at::Tensor& pruned_out) {
  using acc_t = acc_type_t<scalar_t>;
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  const int64_t B = q.size(0), D = q.size(1), K = layout.tensor.size(0);
  const acc_t inv_tau = static_cast<acc_t>(1.0 / temperature);
  const bool prune = gamma.has_value() || gamma_rows.has_value();

  std::vector<acc_t> qh(B * D), kh(B * D), thr(B, std::numeric_limits<acc_t>::infinity());
  normalize_rows<scalar_t, acc_t>(q.data_ptr<scalar_t>(), B, D, qh.data());
  normalize_rows<scalar_t, acc_t>(k.data_ptr<scalar_t>(), B, D, kh.data());
  if (gamma.has_value()) {
    std::fill(thr.begin(), thr.end(), static_cast<acc_t>(*gamma));
  } else if (gamma_rows.has_value()) {
    const at::Tensor g =
        gamma_rows->to(at::kCPU, c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* gp = g.template data_ptr<acc_t>();
    std::copy(gp, gp + B, thr.begin());
  }

  const int64_t n_tiles = (K + kTileK - 1) / kTileK;
  const int n_threads = std::max(1, at::get_num_threads());
  std::vector<Partial<acc_t>> parts(n_threads);
  const scalar_t* queue_ptr = layout.tensor.data_ptr<scalar_t>();
  const bool col_major = layout.col_major;
  const int64_t ldq = layout.ld;
  static const RowKernels<acc_t> kern = row_kernels<acc_t>();

  at::parallel_for(0, n_tiles, 1, [&](int64_t t0, int64_t t1) {
    auto& st = parts[at::get_thread_num()];
    if (!st.used) {
      st.used = true;
      st.m.assign(B, kNegInf);
      st.l.assign(B, acc_t(0));
      st.pruned.assign(B, 0);
      if (need_wsum) st.acc.assign(B * D, acc_t(0));
      st.sbuf.resize(std::min(B, kTileB) * kTileK);
      st.pbuf.resize(std::min(B, kTileB) * kTileK);
      if (!std::is_same_v<scalar_t, acc_t> || col_major) st.tile.resize(kTileK * D);
    }
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k0 = t * kTileK, kt = std::min(kTileK, K - k0);
      // The tile: kt keys, row-major (key i at tile + i * ld) or column-major
      // (feature d of key i at tile + i + d * ld).
      const acc_t* tile = st.tile.data();
      int64_t ld = col_major ? kt : D;
      if (col_major) {
        // MoCo's buffer: the kt keys of a feature are contiguous, but features are
        // ldq (K', often a power of two) apart, so a strided tile's rows share cache
        // sets and the second product reads it from memory again. One contiguous
        // (D x kt) copy per tile (128 KiB at D=128, fp32; the bf16/fp16 conversion
        // anyway) keeps it in L2 for both products. Measured on the 2-core AMD EPYC,
        // K=65536, D=128, forward+backward, 1 thread, median of per-round ratios to
        // (K, D) rows at B=1/8/32/64/256: strided tile 0.68/1.14/1.07/1.05/1.00x,
        // packed 1.02/1.04/1.01/1.02/1.02x (the machine loaded: about +-3% noise).
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t* src = queue_ptr + k0 + d * ldq;
          acc_t* dst = st.tile.data() + d * kt;
          for (int64_t i = 0; i < kt; ++i) dst[i] = static_cast<acc_t>(src[i]);
        }
      } else if constexpr (std::is_same_v<scalar_t, acc_t>) {
        tile = queue_ptr + k0 * D;  // (K, D) rows: read in place
      } else {
        const scalar_t* src = queue_ptr + k0 * D;
        for (int64_t i = 0; i < kt * D; ++i) st.tile[i] = static_cast<acc_t>(src[i]);
      }
      for (int64_t b0 = 0; b0 < B; b0 += kTileB) {
        const int64_t bb = std::min(kTileB, B - b0);
        acc_t* S = st.sbuf.data();
        acc_t* P = st.pbuf.data();
        // S = qh . tile^T: a row-major tile is B^T, a column-major one is B (D x kt).
        gemm_rowmajor<acc_t>(!col_major, bb, kt, D, qh.data() + b0 * D, D, tile, ld, acc_t(0), S,
                             kt);
        for (int64_t i = 0; i < bb; ++i) {
          const int64_t b = b0 + i;
          const acc_t scale = row_update(kern, S + i * kt, P + i * kt, kt, inv_tau, thr[b], prune,
                                         st.m[b], st.l[b], st.pruned[b]);
          if (need_wsum && scale != acc_t(1)) {
            acc_t* a = st.acc.data() + b * D;
            for (int64_t d = 0; d < D; ++d) a[d] *= scale;
          }
        }
        if (need_wsum) {  // acc += P . tile: the other transpose flag of the same layouts
          gemm_rowmajor<acc_t>(col_major, bb, D, kt, P, kt, tile, ld, acc_t(1),
                               st.acc.data() + b0 * D, D);
        }
      }
    }
  });

  // Merge the threads' partials with the positive logit, row by row, in double
  // (a partial sum may be as large as K * exp(kShiftSlack)).
  auto* loss_p = loss.data_ptr<acc_t>();
  auto* lse_p = lse.data_ptr<acc_t>();
  auto* pruned_p = pruned_out.data_ptr<int64_t>();
  acc_t* wsum_p = need_wsum ? wsum.data_ptr<acc_t>() : nullptr;
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    std::vector<double> w(need_wsum ? D : 0);
    for (int64_t b = b0; b < b1; ++b) {
      double spos = 0;
      for (int64_t d = 0; d < D; ++d) spos += double(qh[b * D + d]) * double(kh[b * D + d]);
      const double zpos = spos * (1.0 / temperature);
      // M = max of the positive and the threads' shifts; a NaN anywhere wins.
      double M = zpos;
      int64_t n_pruned = 0;
      for (const auto& st : parts) {
        if (!st.used) continue;
        n_pruned += st.pruned[b];
        const double mt = st.m[b];
        M = (M != M || mt != mt) ? std::numeric_limits<double>::quiet_NaN() : std::max(M, mt);
      }
      // R = sum over kept keys of exp(z_i - M); total = exp(zpos - M) + R.
      double R = 0;
      std::fill(w.begin(), w.end(), 0.0);
      for (const auto& st : parts) {
        if (!st.used || st.m[b] == kNegInf) continue;
        const double f = std::exp(double(st.m[b]) - M);
        R += double(st.l[b]) * f;
        if (need_wsum) {
          const acc_t* a = st.acc.data() + b * D;
          for (int64_t d = 0; d < D; ++d) w[d] += double(a[d]) * f;
        }
      }
      const double total = std::exp(zpos - M) + R;
      // loss = lse - zpos = log1p(R exp(M - zpos)): exact for losses near 0
      // (small tau), where lse - zpos would cancel; the direct form when
      // exp(M - zpos) could overflow.
      const double gap = M - zpos;
      const double loss_b = gap < 500.0 ? std::log1p(R * std::exp(gap)) : gap + std::log(total);
      // A NaN threshold (gamma_rows) has pruned every key of the row; the
      // contract makes its loss and lse NaN (csrc/pruned_info_nce.h).
      const bool nan_threshold = std::isnan(thr[b]);
      const double nan = std::numeric_limits<double>::quiet_NaN();
      lse_p[b] = static_cast<acc_t>(nan_threshold ? nan : zpos + loss_b);
      loss_p[b] = static_cast<acc_t>(nan_threshold ? nan : loss_b);
      pruned_p[b] = n_pruned;
      if (need_wsum) {
        for (int64_t d = 0; d < D; ++d) wsum_p[b * D + d] = static_cast<acc_t>(w[d] / total);
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void normalize_backward_row(const scalar_t* x, const acc_t* g, int64_t D, scalar_t* dx) {
  acc_t ss = 0;
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = static_cast<acc_t>(x[d]);
    ss += v * v;
  }
  const acc_t norm = std::sqrt(ss);
  if (!(norm > acc_t(kNormEps))) {  // clamped denominator: x / eps is linear
    for (int64_t d = 0; d < D; ++d) dx[d] = static_cast<scalar_t>(g[d] / acc_t(kNormEps));
    return;
  }
  const acc_t inv = acc_t(1) / norm;
  acc_t dot = 0;
  for (int64_t d = 0; d < D; ++d) dot += static_cast<acc_t>(x[d]) * inv * g[d];
  for (int64_t d = 0; d < D; ++d) {
    const acc_t xh = static_cast<acc_t>(x[d]) * inv;
    dx[d] = static_cast<scalar_t>((g[d] - xh * dot) * inv);
  }
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& loss, const at::Tensor& wsum, double temperature,
                   bool need_grad_q, bool need_grad_k, at::Tensor& grad_q,
                   at::Tensor& grad_k) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t B = q.size(0), D = q.size(1);
  const acc_t inv_tau = static_cast<acc_t>(1.0 / temperature);
  const auto* qp = q.data_ptr<scalar_t>();
  const auto* kp = k.data_ptr<scalar_t>();
  const auto* gl = grad_loss.data_ptr<acc_t>();
  const auto* lp = loss.data_ptr<acc_t>();
  const acc_t* wp = need_grad_q ? wsum.data_ptr<acc_t>() : nullptr;
  scalar_t* gq = need_grad_q ? grad_q.data_ptr<scalar_t>() : nullptr;
  scalar_t* gk = need_grad_k ? grad_k.data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> qh(D), kh(D), g(D);
    for (int64_t b = b0; b < b1; ++b) {
      normalize_rows<scalar_t, acc_t>(qp + b * D, 1, D, qh.data());
      normalize_rows<scalar_t, acc_t>(kp + b * D, 1, D, kh.data());
      // p+ - 1 = exp(-loss) - 1, exact also for losses near 0.
      const acc_t ppos_m1 = std::expm1(-lp[b]);
      const acc_t c = gl[b] * inv_tau;
      if (need_grad_q) {
        for (int64_t d = 0; d < D; ++d) g[d] = c * (ppos_m1 * kh[d] + wp[b * D + d]);
        normalize_backward_row<scalar_t, acc_t>(qp + b * D, g.data(), D, gq + b * D);
      }
      if (need_grad_k) {
        for (int64_t d = 0; d < D; ++d) g[d] = c * ppos_m1 * qh[d];
        normalize_backward_row<scalar_t, acc_t>(kp + b * D, g.data(), D, gk + b * D);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pruned_info_nce_fwd_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& queue_in,
    double temperature, std::optional<double> gamma,
    const std::optional<at::Tensor>& gamma_rows, bool need_wsum) {
  check_forward_args(q_in, k_in, queue_in, temperature, gamma, gamma_rows);
  const auto q = q_in.contiguous(), k = k_in.contiguous();
  // The queue in place (row-major or MoCo's transposed buffer), never a K x D copy
  // for those two layouts; BLAS takes int leading dimensions.
  QueueLayout layout = queue_layout(queue_in);
  if (layout.ld > std::numeric_limits<int>::max()) layout = {queue_in.contiguous(), q_in.size(1), false};
  const int64_t B = q.size(0), D = q.size(1);
  const auto opts = q.options().dtype(acc_scalar_type(q.scalar_type()));
  auto loss = at::empty({B}, opts);
  auto lse = at::empty({B}, opts);
  auto wsum = at::empty({need_wsum ? B : 0, D}, opts);
  auto pruned = at::empty({B}, q.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "pruned_info_nce_fwd_cpu", [&] {
                                    forward_impl<scalar_t>(q, k, layout, temperature, gamma,
                                                           gamma_rows, need_wsum, loss, lse,
                                                           wsum, pruned);
                                  });
  return {loss, lse, wsum, pruned};
}

std::tuple<at::Tensor, at::Tensor> pruned_info_nce_bwd_cpu(
    const at::Tensor& grad_loss_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& loss_in, const at::Tensor& wsum_in, double temperature,
    bool need_grad_q, bool need_grad_k) {
  check_backward_args(grad_loss_in, q_in, k_in, loss_in, wsum_in, temperature, need_grad_q);
  const auto acc = acc_scalar_type(q_in.scalar_type());
  const auto q = q_in.contiguous(), k = k_in.contiguous();
  const auto grad_loss = grad_loss_in.to(acc).contiguous();
  const auto loss = loss_in.to(acc).contiguous();
  const auto wsum = wsum_in.to(acc).contiguous();
  const int64_t B = q.size(0), D = q.size(1);
  auto grad_q = at::empty({need_grad_q ? B : 0, D}, q.options());
  auto grad_k = at::empty({need_grad_k ? B : 0, D}, k.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "pruned_info_nce_bwd_cpu", [&] {
                                    backward_impl<scalar_t>(grad_loss, q, k, loss, wsum,
                                                            temperature, need_grad_q,
                                                            need_grad_k, grad_q, grad_k);
                                  });
  return {grad_q, grad_k};
}

TORCH_LIBRARY_IMPL(adam_ext, CPU, m) {
  m.impl("pruned_info_nce_fwd", &pruned_info_nce_fwd_cpu);
  m.impl("pruned_info_nce_bwd", &pruned_info_nce_bwd_cpu);
}

}  // namespace adam_ext
