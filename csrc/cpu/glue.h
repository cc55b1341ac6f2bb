// What every CPU glue file needs: the kernel dtype of a tensor, the device check, and threading
// with a grain sized from the work per item.
#pragma once
#include <torch/csrc/stable/ops.h>

#include "cpu/isa.h"
#include "vtp_ext/stable_utils.h"

namespace vtp_ext::cpu {

inline DType kernel_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return DType::kFloat32;
    case ScalarType::Double: return DType::kFloat64;
    case ScalarType::Half: return DType::kFloat16;
    case ScalarType::BFloat16: return DType::kBFloat16;
    case ScalarType::Byte: return DType::kUInt8;
    default: STD_TORCH_CHECK(false, "vtp_ext: unsupported dtype ", dtype_name(t));
  }
  return DType::kFloat32;
}

inline void check_cpu(const Tensor& t, const char* op, const char* arg) {
  STD_TORCH_CHECK(t.is_cpu(), op, ": ", arg, " must be a CPU tensor for the CPU kernel");
}

// parallel_for over [0, n) with tasks of roughly 32K units of work (work_per_item units per item).
template <typename F>
void parallel(int64_t n, int64_t work_per_item, const F& f) {
  if (n <= 0) return;
  torch::stable::parallel_for(0, n, (int64_t{1} << 15) / (work_per_item + 1) + 1, f);
}

}  // namespace vtp_ext::cpu
