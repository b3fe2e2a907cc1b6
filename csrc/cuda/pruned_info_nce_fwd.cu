// CUDA backend of the fused purposively pruned InfoNCE operator: the forward.
// (The backward and the registration: pruned_info_nce_cuda.cu; shared device
// helpers: common.cuh.)
// The contract (math, shapes, dtypes) is in csrc/pruned_info_nce.h.
//
// Forward, three launches on the current stream, no host synchronisation:
//   1. normalize_kernel: one warp per query row; writes qhat = q / max(|q|, eps)
//      into a zero-padded (B_pad, DP) buffer of q's dtype (DP = D rounded up to
//      32/64/128/256, B_pad = B rounded up to the query tile BM) and the positive
//      similarity s+ = qhat . khat (acc_t, computed from q and k in acc_t).
//      For bf16/fp16, qhat is normalised in float and then rounded to the input
//      dtype so that the negatives can use tensor cores: the negative logits are
//      round(qhat) . queue accumulated in float.
//   2. main kernel, grid (query tiles) x (K splits) ("flash-decoding"): each
//      block keeps BM queries in shared memory, streams its range of queue tiles
//      (BN rows each) through shared memory and keeps, per query row, the online
//      maximum m, the sum l of exp(s/tau - m) over kept keys, the pruned count and
//      (need_wsum) O = sum exp(s/tau - m) queue_i, rescaled whenever m grows.
//      The B x K logits only ever exist tile by tile in shared memory. Each block
//      writes (m, l, count, O) of its split to an acc_t workspace.
//        bf16/fp16: nvcuda::wmma m16n16k16 (float accumulation) for S = Qhat T^T
//                   and O += P T; BM = BN = 64, 4 warps, each owning 16 query
//                   rows; S goes through shared memory as float for the
//                   mask/max/exp, P is written back as bf16/fp16; O stays in
//                   accumulator fragments (rescaled through shared memory only
//                   when a row's maximum moves).
//        fp32/fp64: plain FMA (SIMT) path, no TF32; 256 threads, O in registers.
//      Split rule: about (resident blocks per SM) x (SM count) blocks in all,
//      splits = ceil(that / query tiles), no split left empty.
//   3. combine_kernel: one block per query row merges the splits with the
//      positive logit and writes loss, lse, wsum (divided by the final sum) and
//      the pruned count.
// The queue is read in place (queue_layout in pruned_info_nce.h): row-major
// tiles with 16-byte loads, or, for MoCo's (D, K') buffer passed as .t(),
// column-major tiles loaded column by column (load_tile_colmajor); both land
// row-major in shared memory, so the rest of the kernels is the same.
// Non-finite similarities (contract in csrc/pruned_info_nce.h) become NaN and
// are never pruned: fmax skips them in the running maximum and they propagate
// through l and O into the row's loss and wsum.
// NaN threshold (contract in csrc/pruned_info_nce.h): a NaN gamma_rows value
// prunes every finite key in the main kernel (s < NaN is false); the host side then
// sets that row's loss and lse to NaN after the combine (ATen ops on the same
// stream, no synchronisation).
//
// Logits are kept in "scaled" units x = s / tau throughout; m is the true online
// maximum (no fixed shift), so very small tau and non-normalised queues stay
// finite. Fully pruned rows/splits have m = -inf and contribute exactly 0.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>

#include "checks.h"
#include "common.cuh"
#include "pruned_info_nce.h"

namespace adam_ext {
namespace {

constexpr int kMaxD = 256;
constexpr size_t kDefaultSmem = 48 * 1024;

// Dynamic shared memory, one declaration shared by every kernel of this file.
// 128-byte alignment: wmma needs 256-bit aligned pointers.
extern __shared__ __align__(128) unsigned char g_smem[];

// ---------------------------------------------------------------------------
// 1. Prologue: qhat (zero padded to (B_pad, DP)) and s+.
// ---------------------------------------------------------------------------

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    normalize_kernel(const T* __restrict__ q, const T* __restrict__ k, int64_t B,
                     int D, int DP, int64_t B_pad, T* __restrict__ qhat,
                     acc_t* __restrict__ spos) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_block = kRowThreads / 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * warps_per_block;
  const acc_t eps = static_cast<acc_t>(kNormEps);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps_per_block + (threadIdx.x >> 5);
       row < B_pad; row += stride) {
    T* out = qhat + row * DP;
    if (row >= B) {  // padding rows of the last query tile (warp-uniform)
      for (int d = lane; d < DP; d += 32) out[d] = static_cast<T>(0.0f);
      continue;
    }
    const T* qr = q + row * D;
    const T* kr = k + row * D;
    acc_t qq = 0, kk = 0, qk = 0;
    for (int d = lane; d < D; d += 32) {
      const acc_t qv = static_cast<acc_t>(qr[d]);
      const acc_t kv = static_cast<acc_t>(kr[d]);
      qq += qv * qv;
      kk += kv * kv;
      qk += qv * kv;
    }
    qq = warp_sum(qq);
    kk = warp_sum(kk);
    qk = warp_sum(qk);
    const acc_t iq = acc_t(1) / dev_max(dev_sqrt(qq), eps);
    const acc_t ik = acc_t(1) / dev_max(dev_sqrt(kk), eps);
    if (lane == 0) spos[row] = qk * iq * ik;
    for (int d = lane; d < DP; d += 32) {
      out[d] = d < D ? static_cast<T>(static_cast<acc_t>(qr[d]) * iq) : static_cast<T>(0.0f);
    }
  }
}

// ---------------------------------------------------------------------------
// Tile loaders (global -> shared, zero padded beyond nrows / D).
// vec_ok: D is a multiple of the 16-byte vector width and src is 16-byte
// aligned, so every 16-byte chunk is either fully inside a row or fully in the
// padding (c < D  <=>  c + VEC <= D).
// ---------------------------------------------------------------------------
// 16-bit elements handled as raw bits (bf16/fp16); LD * 2 bytes is a multiple
// of 16 so the shared stores are vectorised too.
template <int ROWS, int DP, int LD, int NT>
__device__ __forceinline__ void load_tile_u16(uint16_t* __restrict__ dst,
                                              const uint16_t* __restrict__ src,
                                              int64_t row0, int64_t nrows, int D,
                                              bool vec_ok) {
  static_assert((LD * 2) % 16 == 0, "shared rows must be 16-byte aligned");
  static_assert(DP % 8 == 0, "DP must be a multiple of 8");
  const int tid = threadIdx.x;
  if (vec_ok) {
    constexpr int CPR = DP / 8;  // 16-byte chunks per row
    for (int i = tid; i < ROWS * CPR; i += NT) {
      const int r = i / CPR;
      const int c = (i - r * CPR) * 8;
      const int64_t gr = row0 + r;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (gr < nrows && c < D) v = __ldg(reinterpret_cast<const uint4*>(src + gr * D + c));
      *reinterpret_cast<uint4*>(dst + r * LD + c) = v;
    }
  } else {
    for (int i = tid; i < ROWS * DP; i += NT) {
      const int r = i / DP;
      const int c = i - r * DP;
      const int64_t gr = row0 + r;
      dst[r * LD + c] = (gr < nrows && c < D) ? src[gr * D + c] : uint16_t(0);
    }
  }
}

// float / double elements; shared rows are padded to an odd length (bank
// conflicts), so only the global loads are vectorised.
template <typename T, int ROWS, int DP, int LD, int NT>
__device__ __forceinline__ void load_tile_simt(T* __restrict__ dst, const T* __restrict__ src,
                                               int64_t row0, int64_t nrows, int D,
                                               bool vec_ok) {
  constexpr int VEC = 16 / sizeof(T);
  static_assert(DP % VEC == 0, "DP must be a multiple of the vector width");
  const int tid = threadIdx.x;
  if (vec_ok) {
    constexpr int CPR = DP / VEC;
    for (int i = tid; i < ROWS * CPR; i += NT) {
      const int r = i / CPR;
      const int c = (i - r * CPR) * VEC;
      const int64_t gr = row0 + r;
      union {
        uint4 u;
        T t[VEC];
      } v;
      v.u = make_uint4(0u, 0u, 0u, 0u);
      if (gr < nrows && c < D) v.u = __ldg(reinterpret_cast<const uint4*>(src + gr * D + c));
#pragma unroll
      for (int e = 0; e < VEC; ++e) dst[r * LD + c + e] = v.t[e];
    }
  } else {
    for (int i = tid; i < ROWS * DP; i += NT) {
      const int r = i / DP;
      const int c = i - r * DP;
      const int64_t gr = row0 + r;
      dst[r * LD + c] = (gr < nrows && c < D) ? src[gr * D + c] : T(0);
    }
  }
}

// Column-major source (MoCo's (D, K') queue buffer seen through .t(), see
// queue_layout in pruned_info_nce.h): element (row, c) at src[row + c * ld].
// Consecutive threads take consecutive rows of one column, so the global reads
// are coalesced (not vectorised); zero padded beyond nrows / D like the others.
// E is uint16_t (bf16/fp16 bits), float or double.
template <typename E, int ROWS, int DP, int LD, int NT>
__device__ __forceinline__ void load_tile_colmajor(E* __restrict__ dst, const E* __restrict__ src,
                                                   int64_t row0, int64_t nrows, int D,
                                                   int64_t ld) {
  for (int i = threadIdx.x; i < ROWS * DP; i += NT) {
    const int c = i / ROWS;
    const int r = i - c * ROWS;
    const int64_t gr = row0 + r;
    dst[r * LD + c] = (gr < nrows && c < D) ? src[gr + static_cast<int64_t>(c) * ld] : E(0);
  }
}

// ---------------------------------------------------------------------------
// Parameters of the main kernels (2a, 2b).
// ---------------------------------------------------------------------------
// How the keys of a query are pruned.
enum class PruneMode : int {
  kNone = 0,    // keep every key
  kScalar = 1,  // keep s < gamma (one threshold for every query)
  kPerRow = 2,  // keep s < gamma_rows[row]
};

// Everything a main kernel reads besides its template arguments, passed by
// value (kernel parameter space). acc_t (pruned_info_nce.h) is float for
// bf16/fp16/fp32 inputs, double for fp64: the type of the thresholds, the
// scaled logits and the (m, l, O) workspace.
template <typename T>
struct SplitKernelParams {
  using acc_t = acc_type_t<T>;
  const T* qhat;             // (nqt * BM, DP), zero padded
  const T* queue;            // (K, D): row-major, or column-major (queue_col_major)
  int64_t queue_ld;          // row stride (row-major, == D) or column stride (column-major)
  bool queue_col_major;      // MoCo's (D, K') buffer through .t(): key i, feature d at i + d * ld
  const acc_t* gamma_rows;   // (B,) when prune_mode == kPerRow, else nullptr
  acc_t gamma;               // the threshold when prune_mode == kScalar
  PruneMode prune_mode;
  acc_t inv_tau;
  int64_t B, K;
  int D;
  int64_t nkt;               // queue tiles in all
  int64_t tiles_per_split;   // queue tiles per blockIdx.y
  int64_t nqt;               // query tiles
  bool need_wsum;
  bool vec_ok;               // 16-byte loads of queue rows are allowed (row-major only)
  acc_t* ws_m;               // (nsplit, B)
  acc_t* ws_l;               // (nsplit, B)
  acc_t* ws_o;               // (nsplit, B, D) when need_wsum, else nullptr
  int64_t* ws_cnt;           // (nsplit, B)
};

// ---------------------------------------------------------------------------
// 2a. Main kernel, bf16 / fp16, tensor cores (nvcuda::wmma m16n16k16).
// ---------------------------------------------------------------------------
template <typename T>
struct WmmaType;
template <>
struct WmmaType<c10::Half> {
  using type = __half;
};
template <>
struct WmmaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

__device__ __forceinline__ void store_lowp(__half* p, float v) { *p = __float2half(v); }
// sm_75 (Turing) has no bf16 tensor-core fragments: device code for it leaves the bf16 kernel empty,
// and the host runs bf16 inputs there in float32 (pruned_info_nce_fwd_cuda).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define ADAM_EXT_BF16_WMMA 0
#else
#define ADAM_EXT_BF16_WMMA 1
#endif
#if ADAM_EXT_BF16_WMMA
__device__ __forceinline__ void store_lowp(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16(v);
}
#endif

// Shared-memory fragment loads. For fp16, wmma::load_matrix_sync already
// compiles to ldmatrix. For bf16 the mma.h intrinsics emit the generic-address
// form of wmma.load (slow generic LD + movmatrix), so bf16 issues the same PTX
// instruction with the .shared state space: identical fragment contents (the
// layout is defined by the wmma.load/mma op, not by the state space), and ptxas
// turns it into ldmatrix. p must point into shared memory, 32-byte aligned.
namespace wm = nvcuda::wmma;
using FragA16 = wm::fragment<wm::matrix_a, 16, 16, 16, __half, wm::row_major>;
using FragBc16 = wm::fragment<wm::matrix_b, 16, 16, 16, __half, wm::col_major>;
using FragBr16 = wm::fragment<wm::matrix_b, 16, 16, 16, __half, wm::row_major>;
#if ADAM_EXT_BF16_WMMA
using FragABf = wm::fragment<wm::matrix_a, 16, 16, 16, __nv_bfloat16, wm::row_major>;
using FragBcBf = wm::fragment<wm::matrix_b, 16, 16, 16, __nv_bfloat16, wm::col_major>;
using FragBrBf = wm::fragment<wm::matrix_b, 16, 16, 16, __nv_bfloat16, wm::row_major>;
#endif

__device__ __forceinline__ void lds_frag(FragA16& f, const __half* p, unsigned ldm) {
  wm::load_matrix_sync(f, p, ldm);
}
__device__ __forceinline__ void lds_frag(FragBc16& f, const __half* p, unsigned ldm) {
  wm::load_matrix_sync(f, p, ldm);
}
__device__ __forceinline__ void lds_frag(FragBr16& f, const __half* p, unsigned ldm) {
  wm::load_matrix_sync(f, p, ldm);
}

#if ADAM_EXT_BF16_WMMA
#define ADAM_EXT_WMMA_LDS_BF16(FRAG, OP)                                              \
  __device__ __forceinline__ void lds_frag(FRAG& f, const __nv_bfloat16* p, unsigned ldm) { \
    static_assert(sizeof(f.x) == 16, "bf16 m16n16k16 operand fragment is 4 registers");      \
    unsigned* r = reinterpret_cast<unsigned*>(&f.x[0]);                                \
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));          \
    asm volatile(OP " {%0, %1, %2, %3}, [%4], %5;\n"                                   \
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                      \
                 : "r"(addr), "r"(ldm)                                                 \
                 : "memory");                                                          \
  }
ADAM_EXT_WMMA_LDS_BF16(FragABf, "wmma.load.a.sync.aligned.row.m16n16k16.shared.bf16")
ADAM_EXT_WMMA_LDS_BF16(FragBcBf, "wmma.load.b.sync.aligned.col.m16n16k16.shared.bf16")
ADAM_EXT_WMMA_LDS_BF16(FragBrBf, "wmma.load.b.sync.aligned.row.m16n16k16.shared.bf16")
#undef ADAM_EXT_WMMA_LDS_BF16
#endif

template <int DP>
struct WmmaCfg {
  static constexpr int BM = 64;            // queries per block (4 warps x 16 rows)
  static constexpr int BN = 64;            // queue rows per tile
  static constexpr int NT = 128;           // threads
  static constexpr int LDQ = DP + 8;       // 16-bit elements; multiple of 8
  static constexpr int LDK = DP + 8;
  static constexpr int LDS = BN + 4;       // floats; multiple of 4
  static constexpr int LDP = BN + 8;       // 16-bit elements; multiple of 8
  static constexpr size_t q_bytes = size_t(BM) * LDQ * 2;
  static constexpr size_t k_bytes = size_t(BN) * LDK * 2;
  static constexpr size_t s_bytes = size_t(BM) * LDS * 4;
  static constexpr size_t p_bytes = size_t(BM) * LDP * 2;
  static constexpr size_t smem = q_bytes + k_bytes + s_bytes + p_bytes;
  // Resident blocks per SM the register allocation is capped for (smem allows
  // at least this many on H100 for DP <= 128).
  static constexpr int MIN_BLOCKS = DP <= 128 ? 3 : 1;
  // Every sub-buffer and every 16-row / 16-column fragment pointer must be
  // 32-byte aligned for load/store_matrix_sync.
  static_assert(q_bytes % 32 == 0 && k_bytes % 32 == 0 && s_bytes % 32 == 0, "align");
  static_assert((16 * LDQ * 2) % 32 == 0 && (16 * LDK * 2) % 32 == 0, "align");
  static_assert((16 * LDS * 4) % 32 == 0 && (16 * LDP * 2) % 32 == 0, "align");
  static_assert(DP % 16 == 0 && BN % 16 == 0 && BM == 16 * (NT / 32), "tiles");
};

template <typename T, int DP>
__device__ __forceinline__ void fwd_wmma_body(const SplitKernelParams<T>& params) {
  static_assert(std::is_same<typename SplitKernelParams<T>::acc_t, float>::value, "float acc");
  const T* __restrict__ qhat = params.qhat;
  const T* __restrict__ queue = params.queue;
  const float* __restrict__ gamma_rows = params.gamma_rows;
  const float gamma = params.gamma;
  const PruneMode prune_mode = params.prune_mode;
  const float inv_tau = params.inv_tau;
  const int64_t B = params.B, K = params.K;
  const int D = params.D;
  const int64_t nkt = params.nkt, tiles_per_split = params.tiles_per_split, nqt = params.nqt;
  const bool need_wsum = params.need_wsum, vec_ok = params.vec_ok;
  const bool col_major = params.queue_col_major;
  const int64_t queue_ld = params.queue_ld;
  float* __restrict__ ws_m = params.ws_m;
  float* __restrict__ ws_l = params.ws_l;
  float* __restrict__ ws_o = params.ws_o;
  int64_t* __restrict__ ws_cnt = params.ws_cnt;
  using namespace nvcuda;
  using WT = typename WmmaType<T>::type;
  using Cfg = WmmaCfg<DP>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, NT = Cfg::NT;
  constexpr int LDQ = Cfg::LDQ, LDK = Cfg::LDK, LDS = Cfg::LDS, LDP = Cfg::LDP;
  constexpr int ND = DP / 16;  // O fragments per warp (16 rows x DP)
  constexpr int NS = BN / 16;  // S fragments per warp (16 rows x BN)
  const float kNegInf = neg_inf<float>();

  WT* Qs = reinterpret_cast<WT*>(g_smem);
  WT* Ks = reinterpret_cast<WT*>(g_smem + Cfg::q_bytes);
  float* Ss = reinterpret_cast<float*>(g_smem + Cfg::q_bytes + Cfg::k_bytes);
  WT* Ps = reinterpret_cast<WT*>(g_smem + Cfg::q_bytes + Cfg::k_bytes + Cfg::s_bytes);

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int rloc = lane >> 1;  // row of this lane inside its warp's 16-row strip
  const int hsel = lane & 1;   // the two lanes of a row take even / odd columns
  // Each warp only touches its own 16 rows of S, P and O: warp-level
  // synchronisation suffices for those; Qs/Ks are block-shared.
  const WT* Qw = Qs + warp * 16 * LDQ;
  float* Sw = Ss + warp * 16 * LDS;
  WT* Pw = Ps + warp * 16 * LDP;

  const int64_t split = blockIdx.y;
  const int64_t kt_begin = split * tiles_per_split;
  const int64_t kt_end = kt_begin + tiles_per_split < nkt ? kt_begin + tiles_per_split : nkt;

  for (int64_t qt = blockIdx.x; qt < nqt; qt += gridDim.x) {
    const int64_t q0 = qt * BM;
    const int64_t row = q0 + warp * 16 + rloc;  // global query row of this lane
    __syncthreads();  // the previous query tile is done with Qs
    load_tile_u16<BM, DP, LDQ, NT>(reinterpret_cast<uint16_t*>(Qs),
                                   reinterpret_cast<const uint16_t*>(qhat), q0, nqt * BM,
                                   DP, true);
    float g = 0.f;
    if (prune_mode == PruneMode::kScalar) g = gamma;
    if (prune_mode == PruneMode::kPerRow && row < B) g = gamma_rows[row];
    float m = kNegInf;  // running max of kept scaled logits of row
    float l = 0.f;      // running sum of exp(x - m)
    long long cnt = 0;  // pruned keys seen by this lane

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[ND];
#pragma unroll
    for (int j = 0; j < ND; ++j) wmma::fill_fragment(o[j], 0.f);

    for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
      const int64_t k0 = kt * BN;
      __syncthreads();  // every warp is done reading Ks (previous PV product)
      if (col_major) {
        load_tile_colmajor<uint16_t, BN, DP, LDK, NT>(reinterpret_cast<uint16_t*>(Ks),
                                                      reinterpret_cast<const uint16_t*>(queue),
                                                      k0, K, D, queue_ld);
      } else {
        load_tile_u16<BN, DP, LDK, NT>(reinterpret_cast<uint16_t*>(Ks),
                                       reinterpret_cast<const uint16_t*>(queue), k0, K, D,
                                       vec_ok);
      }
      __syncthreads();  // Ks (and Qs on the first tile) visible to all warps

      // S = Qhat(16 x DP) . Ks^T  ->  Sw (16 x BN, float)
      {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> sacc[NS];
#pragma unroll
        for (int j = 0; j < NS; ++j) wmma::fill_fragment(sacc[j], 0.f);
#pragma unroll
        for (int kk = 0; kk < ND; ++kk) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, WT, wmma::row_major> a;
          lds_frag(a, Qw + kk * 16, LDQ);
#pragma unroll
          for (int j = 0; j < NS; ++j) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, WT, wmma::col_major> b;
            lds_frag(b, Ks + j * 16 * LDK + kk * 16, LDK);
            wmma::mma_sync(sacc[j], a, b, sacc[j]);
          }
        }
#pragma unroll
        for (int j = 0; j < NS; ++j)
          wmma::store_matrix_sync(Sw + j * 16, sacc[j], LDS, wmma::mem_row_major);
      }
      __syncwarp();

      // Mask, online max, sums, P = exp(x - m_new) for row rloc, columns
      // 2*jj + hsel. Pass 1: mask, count, tile max.
      const float* srow = Sw + rloc * LDS;
      float tmax = kNegInf;
#pragma unroll 8
      for (int jj = 0; jj < BN / 2; ++jj) {
        const int col = 2 * jj + hsel;
        const float s = finite_or_nan(srow[col]);
        const bool valid = k0 + col < K;
        // A non-finite s is NaN here and never pruned: it poisons the row's sum.
        const bool keep = valid && (prune_mode == PruneMode::kNone || s < g || is_nan_bits(s));
        cnt += (valid && !keep) ? 1 : 0;
        tmax = fmaxf(tmax, keep ? s * inv_tau : kNegInf);
      }
      tmax = fmaxf(tmax, __shfl_xor_sync(kFullMask, tmax, 1));
      const float m_new = fmaxf(m, tmax);
      const float alpha = m_new == m ? 1.f : expf(m - m_new);  // m = -inf -> 0
      // Pass 2 (S is still intact in shared memory): probabilities.
      float psum = 0.f;
      WT* prow = Pw + rloc * LDP;
#pragma unroll 8
      for (int jj = 0; jj < BN / 2; ++jj) {
        const int col = 2 * jj + hsel;
        const float s = finite_or_nan(srow[col]);
        const bool keep = (k0 + col < K) && (prune_mode == PruneMode::kNone || s < g || is_nan_bits(s));
        const float p = keep ? exp_shifted(s * inv_tau, m_new) : 0.f;
        psum += p;
        if (need_wsum) store_lowp(prow + col, p);
      }
      psum += __shfl_xor_sync(kFullMask, psum, 1);
      // O needs rescaling only where the maximum moved from a finite value
      // (while m == -inf, O holds only zeros, or NaN that stays NaN).
      const bool rescale_row = m_new != m && m != kNegInf;
      l = l * alpha + psum;
      m = m_new;

      if (need_wsum) {
        // Rescale O rows whose maximum moved (rare after the first tiles). The
        // accumulator layout is opaque, so go through shared memory, using the
        // first 16 columns of this warp's S strip as scratch.
        __syncwarp();  // all lanes are done reading Sw
        if (__any_sync(kFullMask, rescale_row)) {
#pragma unroll
          for (int j = 0; j < ND; ++j) {
            wmma::store_matrix_sync(Sw, o[j], LDS, wmma::mem_row_major);
            __syncwarp();
#pragma unroll
            for (int e = 0; e < 8; ++e) Sw[rloc * LDS + hsel * 8 + e] *= alpha;
            __syncwarp();
            wmma::load_matrix_sync(o[j], Sw, LDS, wmma::mem_row_major);
            __syncwarp();
          }
        }
        __syncwarp();  // P visible to the whole warp
        // O(16 x DP) += P(16 x BN) . Ks(BN x DP)
#pragma unroll
        for (int kk = 0; kk < NS; ++kk) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, WT, wmma::row_major> a;
          lds_frag(a, Pw + kk * 16, LDP);
#pragma unroll
          for (int j = 0; j < ND; ++j) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, WT, wmma::row_major> b;
            lds_frag(b, Ks + kk * 16 * LDK + j * 16, LDK);
            wmma::mma_sync(o[j], a, b, o[j]);
          }
        }
      }
    }

    // Partials of this (query tile, split).
    cnt += __shfl_xor_sync(kFullMask, cnt, 1);
    const int64_t widx = split * B + row;
    if (row < B && hsel == 0) {
      ws_m[widx] = m;
      ws_l[widx] = l;
      ws_cnt[widx] = cnt;
    }
    if (need_wsum) {
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        __syncwarp();  // previous readers of the scratch are done
        wmma::store_matrix_sync(Sw, o[j], LDS, wmma::mem_row_major);
        __syncwarp();
        if (row < B) {
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const int d = j * 16 + hsel * 8 + e;
            if (d < D) ws_o[widx * D + d] = Sw[rloc * LDS + hsel * 8 + e];
          }
        }
      }
      __syncwarp();
    }
  }
}

template <typename T, int DP>
__global__ void __launch_bounds__(WmmaCfg<DP>::NT, WmmaCfg<DP>::MIN_BLOCKS)
    fwd_wmma_kernel(const SplitKernelParams<T> params) {
  if constexpr (ADAM_EXT_BF16_WMMA || !std::is_same<T, c10::BFloat16>::value) {
    fwd_wmma_body<T, DP>(params);
  } else {
    __trap();  // never launched: below sm_80 the host runs bf16 inputs in float32
  }
}

// ---------------------------------------------------------------------------
// 2b. Main kernel, float / double, SIMT (FMA, no TF32).
// 256 threads = 16 row groups x 16 column groups. Thread (rg, cg) owns rows
// rg*TR + i (i < TR) of the query tile, S columns cg + 16*j (j < TC) and O
// columns cg + 16*t (t < DP/16). The 16 threads of a row group are one half
// warp, so row reductions are half-warp shuffles.
// ---------------------------------------------------------------------------
template <typename T, int DP>
struct SimtCfg {
  static constexpr bool kDouble = std::is_same<T, double>::value;
  static constexpr int BM = kDouble ? (DP <= 32 ? 64 : DP <= 64 ? 32 : 16) : (DP <= 128 ? 64 : 32);
  static constexpr int BN = kDouble ? (DP <= 64 ? 32 : 16) : 32;
  static constexpr int NT = 256;
  static constexpr int TR = BM / 16;
  static constexpr int TC = BN / 16;
  static constexpr int TD = DP / 16;
  static constexpr int LDQ = DP + 1;  // odd: conflict-free column walks
  static constexpr int LDK = DP + 1;
  static constexpr int LDP = BN + 1;
  static constexpr size_t smem = (size_t(BM) * LDQ + size_t(BN) * LDK + size_t(BM) * LDP) * sizeof(T);
  static_assert(BM % 16 == 0 && BN % 16 == 0 && DP % 16 == 0, "tiles");
};

template <typename T, int DP>
__global__ void __launch_bounds__(SimtCfg<T, DP>::NT)
    fwd_simt_kernel(const SplitKernelParams<T> params) {
  static_assert(std::is_same<typename SplitKernelParams<T>::acc_t, T>::value, "T acc");
  const T* __restrict__ qhat = params.qhat;
  const T* __restrict__ queue = params.queue;
  const T* __restrict__ gamma_rows = params.gamma_rows;
  const T gamma = params.gamma;
  const PruneMode prune_mode = params.prune_mode;
  const T inv_tau = params.inv_tau;
  const int64_t B = params.B, K = params.K;
  const int D = params.D;
  const int64_t nkt = params.nkt, tiles_per_split = params.tiles_per_split, nqt = params.nqt;
  const bool need_wsum = params.need_wsum, vec_ok = params.vec_ok;
  const bool col_major = params.queue_col_major;
  const int64_t queue_ld = params.queue_ld;
  T* __restrict__ ws_m = params.ws_m;
  T* __restrict__ ws_l = params.ws_l;
  T* __restrict__ ws_o = params.ws_o;
  int64_t* __restrict__ ws_cnt = params.ws_cnt;
  using Cfg = SimtCfg<T, DP>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, NT = Cfg::NT;
  constexpr int TR = Cfg::TR, TC = Cfg::TC, TD = Cfg::TD;
  constexpr int LDQ = Cfg::LDQ, LDK = Cfg::LDK, LDP = Cfg::LDP;
  const T kNegInf = neg_inf<T>();

  T* Qs = reinterpret_cast<T*>(g_smem);
  T* Ks = Qs + BM * LDQ;
  T* Ps = Ks + BN * LDK;

  const int cg = threadIdx.x & 15;
  const int rg = threadIdx.x >> 4;
  const int64_t split = blockIdx.y;
  const int64_t kt_begin = split * tiles_per_split;
  const int64_t kt_end = kt_begin + tiles_per_split < nkt ? kt_begin + tiles_per_split : nkt;

  for (int64_t qt = blockIdx.x; qt < nqt; qt += gridDim.x) {
    const int64_t q0 = qt * BM;
    __syncthreads();  // the previous query tile is done with Qs
    load_tile_simt<T, BM, DP, LDQ, NT>(Qs, qhat, q0, nqt * BM, DP, true);

    T g[TR], m[TR], l[TR];
    long long cnt[TR];
    T o[TR][TD];
#pragma unroll
    for (int i = 0; i < TR; ++i) {
      const int64_t row = q0 + rg * TR + i;
      g[i] = prune_mode == PruneMode::kScalar
                 ? gamma
                 : (prune_mode == PruneMode::kPerRow && row < B ? gamma_rows[row] : T(0));
      m[i] = kNegInf;
      l[i] = T(0);
      cnt[i] = 0;
#pragma unroll
      for (int t = 0; t < TD; ++t) o[i][t] = T(0);
    }

    for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
      const int64_t k0 = kt * BN;
      __syncthreads();  // everyone is done reading Ks / Ps of the previous tile
      if (col_major) {
        load_tile_colmajor<T, BN, DP, LDK, NT>(Ks, queue, k0, K, D, queue_ld);
      } else {
        load_tile_simt<T, BN, DP, LDK, NT>(Ks, queue, k0, K, D, vec_ok);
      }
      __syncthreads();

      T s[TR][TC];
#pragma unroll
      for (int i = 0; i < TR; ++i)
#pragma unroll
        for (int j = 0; j < TC; ++j) s[i][j] = T(0);
#pragma unroll 8
      for (int d = 0; d < DP; ++d) {
        T qv[TR], kv[TC];
#pragma unroll
        for (int i = 0; i < TR; ++i) qv[i] = Qs[(rg * TR + i) * LDQ + d];
#pragma unroll
        for (int j = 0; j < TC; ++j) kv[j] = Ks[(cg + 16 * j) * LDK + d];
#pragma unroll
        for (int i = 0; i < TR; ++i)
#pragma unroll
          for (int j = 0; j < TC; ++j) s[i][j] = fma(qv[i], kv[j], s[i][j]);
      }

#pragma unroll
      for (int i = 0; i < TR; ++i) {
        T tmax = kNegInf;
#pragma unroll
        for (int j = 0; j < TC; ++j) {
          const int col = cg + 16 * j;
          const bool valid = k0 + col < K;
          const T sv = finite_or_nan(s[i][j]);  // non-finite: NaN, never pruned
          const bool keep = valid && (prune_mode == PruneMode::kNone || sv < g[i] || is_nan_bits(sv));
          cnt[i] += (valid && !keep) ? 1 : 0;
          s[i][j] = keep ? sv * inv_tau : kNegInf;  // scaled logit, -inf if dropped
          tmax = dev_max(tmax, s[i][j]);
        }
        tmax = warp_max<16>(tmax);
        const T m_new = dev_max(m[i], tmax);
        const T alpha = m_new == m[i] ? T(1) : dev_exp(m[i] - m_new);
        T psum = T(0);
#pragma unroll
        for (int j = 0; j < TC; ++j) {
          const T p = exp_shifted(s[i][j], m_new);
          psum += p;
          if (need_wsum) Ps[(rg * TR + i) * LDP + cg + 16 * j] = p;
        }
        psum = warp_sum<16>(psum);
        l[i] = l[i] * alpha + psum;
        m[i] = m_new;
        if (need_wsum) {
#pragma unroll
          for (int t = 0; t < TD; ++t) o[i][t] *= alpha;
        }
      }

      if (need_wsum) {
        // Ps rows of this row group are written and read by the same half warp.
        __syncwarp();
#pragma unroll 4
        for (int n = 0; n < BN; ++n) {
          T pv[TR];
#pragma unroll
          for (int i = 0; i < TR; ++i) pv[i] = Ps[(rg * TR + i) * LDP + n];
#pragma unroll
          for (int t = 0; t < TD; ++t) {
            const T vv = Ks[n * LDK + cg + 16 * t];
#pragma unroll
            for (int i = 0; i < TR; ++i) o[i][t] = fma(pv[i], vv, o[i][t]);
          }
        }
      }
    }

#pragma unroll
    for (int i = 0; i < TR; ++i) {
      const long long c = warp_sum<16>(cnt[i]);
      const int64_t row = q0 + rg * TR + i;
      if (row < B) {
        const int64_t widx = split * B + row;
        if (cg == 0) {
          ws_m[widx] = m[i];
          ws_l[widx] = l[i];
          ws_cnt[widx] = c;
        }
        if (need_wsum) {
#pragma unroll
          for (int t = 0; t < TD; ++t) {
            const int d = cg + 16 * t;
            if (d < D) ws_o[widx * D + d] = o[i][t];
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// 3. Combine the splits with the positive logit; one block per query row.
// ---------------------------------------------------------------------------
constexpr int kCombineThreads = 256;  // >= kMaxD: thread d owns wsum column d
static_assert(kCombineThreads >= kMaxD, "combine assumes one thread per column");

template <typename acc_t>
__global__ void __launch_bounds__(kCombineThreads)
    combine_kernel(const acc_t* __restrict__ ws_m, const acc_t* __restrict__ ws_l,
                   const acc_t* __restrict__ ws_o, const int64_t* __restrict__ ws_cnt,
                   const acc_t* __restrict__ spos, int64_t nsplit, int64_t B, int D,
                   acc_t inv_tau, bool need_wsum, acc_t* __restrict__ loss,
                   acc_t* __restrict__ lse, acc_t* __restrict__ wsum,
                   int64_t* __restrict__ pruned) {
  __shared__ acc_t sh_red[kCombineThreads / 32];
  __shared__ long long sh_cnt[kCombineThreads / 32];
  __shared__ acc_t sh_w[kCombineThreads];
  const int tid = threadIdx.x;
  const acc_t kNegInf = neg_inf<acc_t>();

  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const acc_t xpos = mul_rn(spos[b], inv_tau);  // the positive logit, always kept
    acc_t mloc = kNegInf;
    for (int64_t s = tid; s < nsplit; s += kCombineThreads) mloc = dev_max(mloc, ws_m[s * B + b]);
    // M = max over splits and the positive (a NaN positive is skipped here and
    // makes L NaN below).
    const acc_t M = dev_max(block_allreduce<acc_t, true>(mloc, sh_red), xpos);
    acc_t lloc = 0;
    long long cloc = 0;
    for (int64_t s = tid; s < nsplit; s += kCombineThreads) {
      lloc += ws_l[s * B + b] * exp_shifted(ws_m[s * B + b], M);
      cloc += ws_cnt[s * B + b];
    }
    // Lneg = sum_i keep exp(x_i - M) over the negatives; L adds the positive.
    const acc_t Lneg = block_allreduce<acc_t, false>(lloc, sh_red);
    const long long C = block_allreduce<long long, false>(cloc, sh_cnt);
    const acc_t L = Lneg + exp_shifted(xpos, M);
    if (tid == 0) {
      lse[b] = M + dev_log(L);
      // loss = lse - xpos = (M - xpos) + log(Lneg + exp(xpos - M))
      //      = (M - xpos) + log1p(Lneg + expm1(xpos - M)).
      // When the positive is the maximum (M == xpos, the only case where the
      // loss can be near 0) this is log1p(sum_i keep exp(x_i - xpos)), the
      // contract's full-relative-precision form; otherwise the loss is > log 2.
      // Exactly 0 when K == 0 or every key is pruned.
      loss[b] = (M - xpos) + dev_log1p(Lneg + dev_expm1(xpos - M));
      pruned[b] = C;
    }
    if (need_wsum) {
      acc_t acc = 0;
      for (int64_t s0 = 0; s0 < nsplit; s0 += kCombineThreads) {
        __syncthreads();  // sh_w of the previous chunk / row is consumed
        if (s0 + tid < nsplit) sh_w[tid] = exp_shifted(ws_m[(s0 + tid) * B + b], M);
        __syncthreads();
        const int64_t n = nsplit - s0 < kCombineThreads ? nsplit - s0 : kCombineThreads;
        if (tid < D) {
          for (int64_t i = 0; i < n; ++i) acc += sh_w[i] * ws_o[((s0 + i) * B + b) * D + tid];
        }
      }
      if (tid < D) wsum[b * D + tid] = acc / L;
    }
  }
}

// ---------------------------------------------------------------------------
// Host side.
// ---------------------------------------------------------------------------
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Opts the kernel into `smem` bytes of dynamic shared memory and returns its
// resident blocks per SM (1..4) on the current device. `cache` (one slot per
// device, 0 = not done yet) belongs to one kernel instantiation, so that the
// attribute call and the occupancy query run once per device, not per call.
constexpr int kMaxCachedDevices = 64;

template <typename Kernel>
int prepare_kernel(std::atomic<int>* cache, Kernel kernel, int threads, size_t smem) {
  const int dev = static_cast<int>(c10::cuda::current_device());
  const bool cacheable = dev >= 0 && dev < kMaxCachedDevices;
  if (cacheable) {
    const int cached = cache[dev].load(std::memory_order_acquire);
    if (cached > 0) return cached;
  }
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(smem <= prop->sharedMemPerBlockOptin, "adam_ext: pruned_info_nce CUDA kernel needs ",
              smem, " bytes of shared memory per block, the device allows ",
              prop->sharedMemPerBlockOptin);
  if (smem > kDefaultSmem) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  int blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads,
                                                               smem));
  const int result = std::min(std::max(blocks_per_sm, 1), 4);
  if (cacheable) cache[dev].store(result, std::memory_order_release);  // a race only redoes the work
  return result;
}

struct FwdArgs {
  at::Tensor q, k;         // contiguous
  QueueLayout queue;       // read in place: row-major or MoCo's transposed buffer
  at::Tensor gamma_rows;   // contiguous acc_t, or undefined
  double gamma;
  PruneMode prune_mode;
  double inv_tau;
  bool need_wsum;
  at::Tensor loss, lse, wsum, pruned;
};

template <typename scalar_t, int DP>
void run_forward(const FwdArgs& a) {
  using acc_t = acc_type_t<scalar_t>;
  constexpr bool kTensorCores = !std::is_same<scalar_t, acc_t>::value;  // bf16 / fp16
  int BM, BN, NT;
  size_t smem;
  if constexpr (kTensorCores) {
    BM = WmmaCfg<DP>::BM;
    BN = WmmaCfg<DP>::BN;
    NT = WmmaCfg<DP>::NT;
    smem = WmmaCfg<DP>::smem;
  } else {
    BM = SimtCfg<scalar_t, DP>::BM;
    BN = SimtCfg<scalar_t, DP>::BN;
    NT = SimtCfg<scalar_t, DP>::NT;
    smem = SimtCfg<scalar_t, DP>::smem;
  }
  const int64_t B = a.q.size(0);
  const int D = static_cast<int>(a.q.size(1));
  const int64_t K = a.queue.tensor.size(0);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto acc_opts = a.q.options().dtype(c10::CppTypeToScalarType<acc_t>::value);

  const int64_t nqt = ceil_div(B, BM);
  const int64_t B_pad = nqt * BM;
  at::Tensor qhat = at::empty({B_pad, DP}, a.q.options());
  at::Tensor spos = at::empty({B}, acc_opts);
  {
    const int64_t blocks = std::min(ceil_div(B_pad, kRowThreads / 32), kMaxGridX);
    normalize_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(
        a.q.data_ptr<scalar_t>(), a.k.data_ptr<scalar_t>(), B, D, DP, B_pad,
        qhat.data_ptr<scalar_t>(), spos.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // Split-K plan: about blocks_per_sm resident blocks on every SM.
  const int64_t nkt = ceil_div(K, BN);
  int64_t nsplit = 0, tiles_per_split = 1;
  int blocks_per_sm = 1;
  static std::atomic<int> prepared[kMaxCachedDevices];  // per instantiation, zero-initialised
  if constexpr (kTensorCores) {
    if (nkt > 0) blocks_per_sm = prepare_kernel(prepared, fwd_wmma_kernel<scalar_t, DP>, NT, smem);
  } else {
    if (nkt > 0) blocks_per_sm = prepare_kernel(prepared, fwd_simt_kernel<scalar_t, DP>, NT, smem);
  }
  if (nkt > 0) {
    const int64_t num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const int64_t qtiles_in_grid = std::min(nqt, kMaxGridX);
    const int64_t want_splits = std::max<int64_t>(1, ceil_div(num_sms * blocks_per_sm, qtiles_in_grid));
    tiles_per_split = std::max<int64_t>({ceil_div(nkt, want_splits), ceil_div(nkt, kMaxGridY), 1});
    nsplit = ceil_div(nkt, tiles_per_split);  // no empty split
  }
  at::Tensor ws_m = at::empty({nsplit, B}, acc_opts);
  at::Tensor ws_l = at::empty({nsplit, B}, acc_opts);
  at::Tensor ws_cnt = at::empty({nsplit, B}, a.q.options().dtype(at::kLong));
  at::Tensor ws_o = at::empty({a.need_wsum ? nsplit : 0, B, D}, acc_opts);

  if (nsplit > 0) {
    const dim3 grid(static_cast<unsigned>(std::min(nqt, kMaxGridX)), static_cast<unsigned>(nsplit));
    const bool vec_ok = !a.queue.col_major &&
                        D % (16 / static_cast<int>(sizeof(scalar_t))) == 0 &&
                        aligned16(a.queue.tensor.data_ptr());
    SplitKernelParams<scalar_t> p;
    p.qhat = qhat.data_ptr<scalar_t>();
    p.queue = a.queue.tensor.data_ptr<scalar_t>();
    p.queue_ld = a.queue.ld;
    p.queue_col_major = a.queue.col_major;
    p.gamma_rows = a.prune_mode == PruneMode::kPerRow ? a.gamma_rows.data_ptr<acc_t>() : nullptr;
    p.gamma = static_cast<acc_t>(a.gamma);
    p.prune_mode = a.prune_mode;
    p.inv_tau = static_cast<acc_t>(a.inv_tau);
    p.B = B;
    p.K = K;
    p.D = D;
    p.nkt = nkt;
    p.tiles_per_split = tiles_per_split;
    p.nqt = nqt;
    p.need_wsum = a.need_wsum;
    p.vec_ok = vec_ok;
    p.ws_m = ws_m.data_ptr<acc_t>();
    p.ws_l = ws_l.data_ptr<acc_t>();
    p.ws_o = a.need_wsum ? ws_o.data_ptr<acc_t>() : nullptr;
    p.ws_cnt = ws_cnt.data_ptr<int64_t>();
    if constexpr (kTensorCores) {
      fwd_wmma_kernel<scalar_t, DP><<<grid, NT, smem, stream>>>(p);
    } else {
      fwd_simt_kernel<scalar_t, DP><<<grid, NT, smem, stream>>>(p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  {
    const int64_t blocks = std::min(B, kMaxGridX);
    combine_kernel<acc_t><<<static_cast<unsigned>(blocks), kCombineThreads, 0, stream>>>(
        nsplit > 0 ? ws_m.data_ptr<acc_t>() : nullptr, nsplit > 0 ? ws_l.data_ptr<acc_t>() : nullptr,
        (nsplit > 0 && a.need_wsum) ? ws_o.data_ptr<acc_t>() : nullptr,
        nsplit > 0 ? ws_cnt.data_ptr<int64_t>() : nullptr, spos.data_ptr<acc_t>(), nsplit, B, D,
        static_cast<acc_t>(a.inv_tau), a.need_wsum, a.loss.data_ptr<acc_t>(),
        a.lse.data_ptr<acc_t>(), a.need_wsum ? a.wsum.data_ptr<acc_t>() : nullptr,
        a.pruned.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pruned_info_nce_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& queue, double temperature,
    std::optional<double> gamma, const std::optional<at::Tensor>& gamma_rows, bool need_wsum) {
  check_forward_args(q, k, queue, temperature, gamma, gamma_rows);
  TORCH_CHECK(q.is_cuda(), "adam_ext: q must be a CUDA tensor for the CUDA kernel, got ",
              q.device());
  const int64_t D = q.size(1);
  TORCH_CHECK(D <= kMaxD, "adam_ext: q must have a feature dimension D <= ", kMaxD,
              " on CUDA, got shape ", q.sizes());
  const at::cuda::OptionalCUDAGuard guard(q.device());
  if (q.scalar_type() == at::kBFloat16 && at::cuda::getCurrentDeviceProperties()->major < 8) {
    // No bf16 tensor cores before sm_80: the float32 kernel on float32 copies (the queue's too). The
    // outputs are float32 either way (bf16's accumulation type), so the caller sees no difference.
    const auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
    return pruned_info_nce_fwd_cuda(f32(q), f32(k), f32(queue), temperature, gamma, gamma_rows, need_wsum);
  }

  const int64_t B = q.size(0);
  const auto acc_type = acc_scalar_type(q.scalar_type());
  const auto acc_opts = q.options().dtype(acc_type);

  FwdArgs a;
  a.q = q.contiguous();
  a.k = k.contiguous();
  a.queue = queue_layout(queue);  // no K x D copy for (K, D) rows or MoCo's (D, K) buffer .t()
  a.gamma = gamma.has_value() ? *gamma : 0.0;
  a.prune_mode = gamma.has_value()        ? PruneMode::kScalar
                 : gamma_rows.has_value() ? PruneMode::kPerRow
                                          : PruneMode::kNone;
  if (a.prune_mode == PruneMode::kPerRow) a.gamma_rows = gamma_rows->to(acc_type).contiguous();
  a.inv_tau = 1.0 / temperature;
  a.need_wsum = need_wsum;
  a.loss = at::empty({B}, acc_opts);
  a.lse = at::empty({B}, acc_opts);
  a.wsum = at::empty({need_wsum ? B : 0, D}, acc_opts);
  a.pruned = at::empty({B}, q.options().dtype(at::kLong));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "pruned_info_nce_fwd_cuda", [&] {
        if (D <= 32) {
          run_forward<scalar_t, 32>(a);
        } else if (D <= 64) {
          run_forward<scalar_t, 64>(a);
        } else if (D <= 128) {
          run_forward<scalar_t, 128>(a);
        } else {
          run_forward<scalar_t, 256>(a);
        }
      });
  if (a.prune_mode == PruneMode::kPerRow) {
    // The contract's NaN threshold rule: the kernels pruned every key of such a
    // row (s < NaN is false); its loss and lse are NaN.
    const at::Tensor nan_rows = a.gamma_rows.isnan();
    a.loss.masked_fill_(nan_rows, std::numeric_limits<double>::quiet_NaN());
    a.lse.masked_fill_(nan_rows, std::numeric_limits<double>::quiet_NaN());
  }
  return {a.loss, a.lse, a.wsum, a.pruned};
}

}  // namespace adam_ext
