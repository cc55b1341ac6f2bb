// dtype dispatch of the CUDA glue: calls f with a value of the device storage type.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "vtp_ext/stable_utils.h"

namespace vtp_ext::cuda {

template <typename F>
void with_float_type(ScalarType t, F&& f) {
  switch (t) {
    case ScalarType::Float: f(float{}); break;
    case ScalarType::Double: f(double{}); break;
    case ScalarType::Half: f(__half{}); break;
    case ScalarType::BFloat16: f(__nv_bfloat16{}); break;
    default: STD_TORCH_CHECK(false, "vtp_ext: unsupported dtype ", dtype_name(t));
  }
}

}  // namespace vtp_ext::cuda
