// CPU kernels are compiled once per instruction set (csrc/cpu/kernels_isa.cpp, built for a portable
// baseline, for AVX2+FMA+F16C and for AVX-512 (F, VL, BW, DQ, CD)) and picked at run time, because the
// stable ABI has no at::vec and a wheel cannot assume the user's CPU. The kernels see only raw
// pointers and this table; no torch header is included there, so no torch inline function gets
// compiled with AVX2 or AVX-512 flags.
#pragma once
#include <cstdint>

#include "vtp_ext/gumbel_math.h"
#include "vtp_ext/row_indexer.h"
#include "vtp_ext/saliency_math.h"
#include "vtp_ext/tome_math.h"

namespace vtp_ext::cpu {

enum class DType : int32_t { kFloat32, kFloat64, kFloat16, kBFloat16, kUInt8 };

struct TokenSaliencyFwdArgs {
  const void* x;        // rows of D dense elements, addressed by `rows`
  void* out;            // [n_rows], contiguous, dtype of x
  RowIndexer rows;
  int64_t D;
  int64_t correction;
  SaliencyMethod method;
  DType dtype;
};

struct TokenSaliencyBwdArgs {
  const void* grad;     // [n_rows], addressed by grad_rows (may be expanded / strided)
  const void* x;
  const void* out;      // forward result, addressed by out_rows
  void* grad_x;         // [n_rows, D], contiguous
  RowIndexer grad_rows, x_rows, out_rows;
  int64_t D;
  int64_t correction;
  SaliencyMethod method;
  DType dtype;
};

// One separable operator applied to images: out[p] = A_y · in[p] · A_xᵀ for every plane p. A row of
// an image is `cols` pixels of `channels` contiguous elements (channels = 1 for NCHW planes, C for
// channels_last images). Work item = (plane, output row). Weights are float for float/half/bf16/uint8
// data and double for double data. uint8 output rounds half up (OpenCV's fixed-point rule).
struct SeparableApplyArgs {
  const void* in;
  void* out;
  DType dtype;
  RowIndexer in_planes, out_planes;  // plane p -> element offset
  int64_t planes, channels;
  int64_t in_rows, in_cols, in_row_stride;
  int64_t out_rows, out_cols, out_row_stride;
  const int32_t* y_index; const void* y_weight; const int32_t* y_count; int64_t y_taps;
  const int32_t* x_index; const void* x_weight; const int32_t* x_count; int64_t x_taps;
  // Optional fast path (channels == 1): for outputs j in [x_interior_begin, x_interior_end),
  // out[j] = sum_e x_stencil[e] * row[2j + x_stencil_offset + e] (a uniform stride-2 stencil).
  int64_t x_interior_begin, x_interior_end, x_stencil_offset, x_stencil_len;
  const void* x_stencil;
  // uint8 only, optional: the same weights as integers in 1/16ths (OpenCV's binomial, borders
  // included), null when some weight is not one. The kernel then sums exactly in 16-bit integers
  // (255 * 16 * 16 fits) and rounds with (sum + 128) >> 8, as OpenCV does.
  const uint16_t* y_weight_q4; const uint16_t* x_weight_q4; const uint16_t* x_stencil_q4;
  // Optional fast path of upsampling operators (the backward), planar rows: for outputs j in
  // [x_poly_begin, x_poly_end) (both even), out[2m + ph] = sum_e x_poly[ph][e] * row[m + x_poly_offset[ph] + e]
  // with x_poly_len[ph] taps -- one uniform stride-1 stencil per output phase.
  int64_t x_poly_begin, x_poly_end, x_poly_offset[2], x_poly_len[2];
  const void* x_poly[2];
};

// ToMe bipartite matching. Stage 1 (items: B*N tokens) writes unit-norm copies of the metric rows in
// the accumulation type: sources [B][na][C] and destinations transposed [B][C][nbp] (nbp = nb rounded
// up, zero-padded). Stage 2 (items: B * ceil(na/4) source tiles) computes every source's best
// destination tile by tile -- the [na, nb] score matrix is never stored. Stage 3 (items: B) ranks
// the sources and writes the plan.
struct TomeMatchArgs {
  const void* metric;
  DType dtype;
  int64_t B, N, C, na, nb, nbp, r;
  int64_t metric_batch_stride, metric_token_stride;  // the channel dimension is dense
  bool class_token, distill_token;
  void* work_a;       // [B][na][C]
  void* work_bt;      // [B][C][nbp]
  void* best;         // [B][na], accumulation type
  int64_t* best_idx;  // [B][na]
  int64_t* unm_idx;   // [B][na - r]
  int64_t* src_idx;   // [B][r]
  int64_t* dst_idx;   // [B][r]
};

// ToMe merge / unmerge over a plan (unm_idx [B][na-r], src_idx/dst_idx [B][r]); x rows [B][N][D] with a
// dense last dimension. Items: B * rows. Destination rows sum their members in a fixed order -- the
// destination itself, then its sources in plan order -- so results are deterministic.
struct TomeMergeArgs {
  DType dtype;
  TomeMode mode;
  int64_t B, N, D, na, nb, r, n_out;
  bool distill_token;
  const int64_t* unm_idx; const int64_t* src_idx; const int64_t* dst_idx;
  const void* x; int64_t x_batch_stride, x_token_stride;      // [B, N, D]
  const void* size; int64_t size_batch_stride, size_token_stride;  // [B, N] or null (all ones)
  void* out;        // [B, n_out, D] contiguous
  void* size_out;   // [B, n_out] contiguous
  // backward
  const void* grad_out; int64_t g_batch_stride, g_token_stride;       // [B, n_out, D]
  const void* grad_size_out; int64_t gs_batch_stride, gs_token_stride;  // [B, n_out] or null
  const void* merged; int64_t m_batch_stride, m_token_stride;          // forward out [B, n_out, D]
  const void* merged_size; int64_t ms_batch_stride, ms_token_stride;   // forward size_out [B, n_out]
  void* grad_x;     // [B, N, D] contiguous
  void* grad_size;  // [B, N] contiguous or null
  int64_t* positions;  // [B][N] output row of every input token (workspace)
  int32_t* counts;     // [B][n_out] members per output row (workspace)
};

struct SegmentedTopkArgs {
  const void* scores;        // [B, L], addressed by the two strides
  int64_t row_stride, col_stride;
  const int64_t* offsets;    // [S+1]
  const int64_t* seg_k;      // [B*S] k clamped to the segment length
  const int64_t* seg_start;  // [B*S] where the (row, segment)'s selection starts in its output row
  const int64_t* lengths;    // [B] total selected per row
  void* values;              // [B, max_k], contiguous, dtype of scores
  int64_t* indices;          // [B, max_k], contiguous
  int64_t B, S, max_k;
  bool largest, by_index;
  DType dtype;
};

// out[b, k, :] = x[b, indices[b, k], :] (zeros for -1).
struct GatherRowsArgs {
  const void* x;             // [B, L, D] with any strides
  int64_t x_sb, x_sl, x_sd;
  const int64_t* indices;    // [B, K] with any strides
  int64_t idx_sb, idx_sk;
  void* out;                 // [B, K, D], contiguous
  int64_t B, K, L, D;
  DType dtype;
};

// out[b, l, :] = sum of src[b, j, :] over the j with indices[b, j] == l, summed in increasing j.
// Two phases, as on the GPU: an inverse map (first j and count per (b, l)), then one task per output
// row, so the sum order -- and hence the rounding -- is the same on both backends and every output
// row has exactly one writer.
struct ScatterRowsArgs {
  const void* src;           // [B, K, D] with any strides
  int64_t src_sb, src_sk, src_sd;
  const int64_t* indices;    // [B, K] with any strides
  int64_t idx_sb, idx_sk;
  int32_t* first;            // [B, L] scratch: smallest j pointing at (b, l)
  int32_t* count;            // [B, L] scratch: how many j point at (b, l)
  void* out;                 // [B, L, D], contiguous
  int64_t B, K, L, D;
  DType dtype;
};

// gumbel_topk (forward and backward) and gumbel_noise; one task per row.
struct GumbelArgs {
  const void* logits;        // [B, N], addressed by the two strides
  int64_t logits_rs, logits_cs;
  const void* grad;          // backward: [B, N] upstream gradient of the mask, addressed by its strides
  int64_t grad_rs, grad_cs;
  const int64_t* k;          // [B], clamped to [0, N]
  void* out;                 // [B, N], contiguous: the mask, grad_logits, or (gumbel_noise) the noise
  int64_t B, N;
  double tau;
  uint64_t seed;
  int64_t step;              // gumbel_noise only
  GumbelMode mode;
  bool training;
  DType dtype;               // of logits; gumbel_noise writes float64 for kFloat64, float32 otherwise
  // Sequential mode: runs body(ctx, begin, end) over [0, n) on the caller's threads, to split one row's
  // selection steps over threads when there are two threads or more per row; null runs everything inline.
  void (*parallel_steps)(int64_t n, void (*body)(void* ctx, int64_t begin, int64_t end), void* ctx);
};

// Each entry processes rows [begin, end); the caller splits rows over threads.
struct KernelTable {
  const char* isa;
  void (*token_saliency_fwd)(const TokenSaliencyFwdArgs&, int64_t begin, int64_t end);
  void (*token_saliency_bwd)(const TokenSaliencyBwdArgs&, int64_t begin, int64_t end);
  void (*separable_apply)(const SeparableApplyArgs&, int64_t begin, int64_t end);
  void (*tome_normalize)(const TomeMatchArgs&, int64_t begin, int64_t end);
  void (*tome_best)(const TomeMatchArgs&, int64_t begin, int64_t end);
  void (*tome_plan)(const TomeMatchArgs&, int64_t begin, int64_t end);
  void (*tome_positions)(const TomeMergeArgs&, int64_t begin, int64_t end);   // items: B
  void (*tome_merge)(const TomeMergeArgs&, int64_t begin, int64_t end);       // items: B * n_out
  void (*tome_merge_bwd)(const TomeMergeArgs&, int64_t begin, int64_t end);   // items: B * N
  void (*tome_unmerge)(const TomeMergeArgs&, int64_t begin, int64_t end);     // items: B * N (x -> out)
  void (*tome_unmerge_bwd)(const TomeMergeArgs&, int64_t begin, int64_t end); // items: B * n_out
  // tasks are (row, segment) pairs b * S + s; the task of a row's last segment also pads that row
  void (*segmented_topk)(const SegmentedTopkArgs&, int64_t begin, int64_t end);
  // tasks are output rows b * K + k; returns false if an index was out of range (that row is zeroed)
  bool (*gather_rows)(const GatherRowsArgs&, int64_t begin, int64_t end);
  // phase 1 over batch rows b (returns false if an index was out of range); phase 2 over b * L + l
  bool (*scatter_rows_index)(const ScatterRowsArgs&, int64_t begin, int64_t end);
  void (*scatter_rows_sum)(const ScatterRowsArgs&, int64_t begin, int64_t end);
  void (*gumbel_noise)(const GumbelArgs&, int64_t begin, int64_t end);
  // return false if a row holds NaN or +inf (the op's error); rows are tasks
  bool (*gumbel_topk_fwd)(const GumbelArgs&, int64_t begin, int64_t end);
  bool (*gumbel_topk_bwd)(const GumbelArgs&, int64_t begin, int64_t end);
};

// The table for the best instruction set this CPU supports; VTP_EXT_CPU_ISA=<name> (base, avx2,
// avx512) asks for a lower one, e.g. to test every build on one machine (read once, at first use).
const KernelTable& kernels();
const char* active_isa_name();

#define VTP_DECLARE_ISA_TABLE(isa) \
  namespace isa {                  \
  const KernelTable& table();      \
  }
#ifdef VTP_ISA_HAVE_base
VTP_DECLARE_ISA_TABLE(base)
#endif
#ifdef VTP_ISA_HAVE_avx2
VTP_DECLARE_ISA_TABLE(avx2)
#endif
#ifdef VTP_ISA_HAVE_avx512
VTP_DECLARE_ISA_TABLE(avx512)
#endif
#undef VTP_DECLARE_ISA_TABLE

}  // namespace vtp_ext::cpu
