// Compiled once per instruction set with -DVTP_ISA=<name> (see CMakeLists.txt); every function here
// lives in namespace vtp_ext::cpu::<name>. Add each new op's kernel header and table entry here.
#ifndef VTP_ISA
#error "compile with -DVTP_ISA=<isa name>"
#endif
#define VTP_STR2(x) #x
#define VTP_STR(x) VTP_STR2(x)

#include "cpu/isa.h"
#include "cpu/separable_kernels.h"
#include "cpu/token_saliency_kernels.h"
#include "cpu/tome_kernels.h"
#include "cpu/segmented_topk_kernels.h"
#include "cpu/gather_tokens_kernels.h"
#include "cpu/gumbel_topk_kernels.h"

namespace vtp_ext::cpu::VTP_ISA {

const KernelTable& table() {
  static const KernelTable t{VTP_STR(VTP_ISA), &token_saliency_fwd, &token_saliency_bwd, &separable_apply,
                             &tome_normalize, &tome_best, &tome_plan, &tome_positions, &tome_merge,
                             &tome_merge_bwd, &tome_unmerge, &tome_unmerge_bwd,
                             &segmented_topk, &gather_rows, &scatter_rows_index, &scatter_rows_sum,
                             &gumbel_noise, &gumbel_topk_fwd, &gumbel_topk_bwd};
  return t;
}

}  // namespace vtp_ext::cpu::VTP_ISA
