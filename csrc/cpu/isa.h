// CPU kernels are compiled once per instruction set (csrc/cpu/kernels_isa.cpp, built for a portable
// baseline and for AVX2+FMA+F16C) and picked at run time, because the stable ABI has no at::vec and a
// wheel cannot assume the user's CPU. The kernels see only raw pointers and this table; no torch
// header is included there, so no torch inline function gets compiled with AVX2 flags.
#pragma once
#include <cstdint>

#include "vtp_ext/row_indexer.h"
#include "vtp_ext/saliency_math.h"

namespace vtp_ext::cpu {

enum class DType : int32_t { kFloat32, kFloat64, kFloat16, kBFloat16 };

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

// Each entry processes rows [begin, end); the caller splits rows over threads.
struct KernelTable {
  const char* isa;
  void (*token_saliency_fwd)(const TokenSaliencyFwdArgs&, int64_t begin, int64_t end);
  void (*token_saliency_bwd)(const TokenSaliencyBwdArgs&, int64_t begin, int64_t end);
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
