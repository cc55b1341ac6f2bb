// dtype dispatch for the per-ISA CPU kernels: calls f with a value of the storage type (float,
// double, f16, bf16) that DType names.
#pragma once
#include "cpu/isa.h"
#include "cpu/scalar.h"

namespace vtp_ext::cpu::VTP_ISA {

template <typename F>
static inline decltype(auto) with_storage_type(DType dt, F&& f) {
  switch (dt) {
    case DType::kFloat64: return f(double{});
    case DType::kFloat16: return f(f16{});
    case DType::kBFloat16: return f(bf16{});
    case DType::kFloat32: break;
    case DType::kUInt8: break;  // not a dtype of these ops: their glue rejects it
  }
  return f(float{});
}

}  // namespace vtp_ext::cpu::VTP_ISA
