// Helpers of the CPU glue (csrc/cpu/*_op.cpp): the kernel-side dtype tag and the device check.
#pragma once
#include "cpu/isa.h"
#include "vtp_ext/stable_utils.h"

namespace vtp_ext::cpu {

inline DType kernel_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return DType::kFloat32;
    case ScalarType::Double: return DType::kFloat64;
    case ScalarType::Half: return DType::kFloat16;
    case ScalarType::BFloat16: return DType::kBFloat16;
    default: STD_TORCH_CHECK(false, "vtp_ext: unsupported dtype ", dtype_name(t));
  }
  return DType::kFloat32;
}

inline void check_on_cpu(const Tensor& t, const char* op, const char* arg) {
  STD_TORCH_CHECK(t.is_cpu(), op, ": ", arg, " must be a CPU tensor for the CPU kernel");
}

}  // namespace vtp_ext::cpu
