// CPU kernels are compiled once per instruction set (csrc/cpu/kernels_isa.cpp, built for a portable
// baseline and for AVX2+FMA+F16C) and picked at run time, because the stable ABI has no at::vec and a
// wheel cannot assume the user's CPU. The kernels see only raw pointers and this table; no torch
// header is included there, so no torch inline function gets compiled with AVX2 flags.
#pragma once
#include <cstdint>

#include "vtp_ext/row_indexer.h"
#include "vtp_ext/saliency_math.h"

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
};

// Each entry processes rows [begin, end); the caller splits rows over threads.
struct KernelTable {
  const char* isa;
  void (*token_saliency_fwd)(const TokenSaliencyFwdArgs&, int64_t begin, int64_t end);
  void (*token_saliency_bwd)(const TokenSaliencyBwdArgs&, int64_t begin, int64_t end);
  void (*separable_apply)(const SeparableApplyArgs&, int64_t begin, int64_t end);
};

// The table for the best instruction set this CPU supports; VTP_EXT_CPU_ISA=base forces the
// portable one (read once, at first use).
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
#undef VTP_DECLARE_ISA_TABLE

}  // namespace vtp_ext::cpu
