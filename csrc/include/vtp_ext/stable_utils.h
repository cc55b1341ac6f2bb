// Host-side helpers over the LibTorch stable API (torch/csrc/stable, torch/headeronly): argument
// checks with messages that name the argument, dtype names, and row geometry for kernels.
#pragma once
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>
#include <string_view>

#include "vtp_ext/row_indexer.h"

namespace vtp_ext {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

inline const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Byte: return "uint8";
    case ScalarType::Char: return "int8";
    case ScalarType::Short: return "int16";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Bool: return "bool";
    case ScalarType::ComplexFloat: return "complex64";
    case ScalarType::ComplexDouble: return "complex128";
    default: return "an unsupported dtype";
  }
}

inline bool is_floating(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half ||
         t == ScalarType::BFloat16;
}

inline void check_strided(const Tensor& t, const char* op, const char* arg) {
  STD_TORCH_CHECK(t.layout() == torch::headeronly::Layout::Strided, op, ": ", arg,
                  " must be a dense (strided) tensor");
}

inline void check_floating(const Tensor& t, const char* op, const char* arg) {
  STD_TORCH_CHECK(is_floating(t.scalar_type()), op, ": ", arg,
                  " must be float32, float64, float16 or bfloat16, got ", dtype_name(t.scalar_type()));
}

inline void check_same_dtype(const Tensor& a, const Tensor& b, const char* op, const char* arg_a,
                             const char* arg_b) {
  STD_TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", arg_a, " and ", arg_b,
                  " must have the same dtype, got ", dtype_name(a.scalar_type()), " and ",
                  dtype_name(b.scalar_type()));
}

inline void check_same_device(const Tensor& a, const Tensor& b, const char* op, const char* arg_a,
                              const char* arg_b) {
  STD_TORCH_CHECK(a.is_cpu() == b.is_cpu() && a.get_device_index() == b.get_device_index(), op, ": ",
                  arg_a, " and ", arg_b, " must be on the same device");
}

inline std::string shape_str(const Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d) s += ", ";
    s += std::to_string(t.size(d));
  }
  return s + "]";
}

inline void check_same_shape(const Tensor& a, const Tensor& b, const char* op, const char* arg_a,
                             const char* arg_b) {
  bool same = a.dim() == b.dim();
  for (int64_t d = 0; same && d < a.dim(); ++d) same = a.size(d) == b.size(d);
  STD_TORCH_CHECK(same, op, ": ", arg_b, " must have the shape of ", arg_a, " ", shape_str(a), ", got ",
                  shape_str(b));
}

// Rows of t = all dimensions but the last `inner` ones, collapsed where they are contiguous with
// each other. Returns false when the rows cannot be described with RowIndexer::kMaxDims dimensions.
inline bool make_row_indexer(const Tensor& t, int64_t inner, RowIndexer& idx) {
  idx.ndim = 0;
  for (int64_t d = 0; d < t.dim() - inner; ++d) {
    const int64_t size = t.size(d), stride = t.stride(d);
    if (size == 1) continue;
    if (idx.ndim > 0 && idx.strides[idx.ndim - 1] == stride * size) {
      idx.sizes[idx.ndim - 1] *= size;
      idx.strides[idx.ndim - 1] = stride;
      continue;
    }
    if (idx.ndim == RowIndexer::kMaxDims) return false;
    idx.sizes[idx.ndim] = size;
    idx.strides[idx.ndim] = stride;
    ++idx.ndim;
  }
  return true;
}

// t viewed as rows of its last `inner` dimensions (inner = 0: one element per row). The rows keep
// t's strides; t is copied to contiguous only when the innermost dimension is not dense or the
// leading dimensions do not fit a RowIndexer.
struct Rows {
  Tensor t;
  RowIndexer idx;
};

inline Rows rows_of(const Tensor& t, int64_t inner) {
  Rows r{t, {}};
  const bool inner_dense = inner == 0 || t.size(t.dim() - 1) <= 1 || t.stride(t.dim() - 1) == 1;
  const bool inner_packed = inner <= 1;  // kernels address more than one inner dim as packed
  if (!inner_dense || !inner_packed || !make_row_indexer(t, inner, r.idx)) {
    r.t = torch::stable::contiguous(t);
    make_row_indexer(r.t, inner, r.idx);
  }
  return r;
}

inline int64_t num_rows(const Tensor& t, int64_t inner) {
  int64_t r = 1;
  for (int64_t d = 0; d < t.dim() - inner; ++d) r *= t.size(d);
  return r;
}

// A tensor of the given shape (all dims of t but the last `drop`) on t's device.
inline Tensor empty_leading(const Tensor& t, int64_t drop, ScalarType dtype) {
  std::vector<int64_t> shape;
  for (int64_t d = 0; d < t.dim() - drop; ++d) shape.push_back(t.size(d));
  return torch::stable::new_empty(t, torch::headeronly::IntHeaderOnlyArrayRef(shape), dtype);
}

inline Tensor new_tensor(const Tensor& like, std::initializer_list<int64_t> sizes, ScalarType dtype) {
  return torch::stable::new_empty(like, torch::headeronly::IntHeaderOnlyArrayRef(sizes.begin(), sizes.size()), dtype);
}

// Kernels read rows with a dense last dimension; other strides are used as they are.
inline Tensor dense_last(const Tensor& t) {
  return (t.size(t.dim() - 1) <= 1 || t.stride(t.dim() - 1) == 1) ? t : torch::stable::contiguous(t);
}

}  // namespace vtp_ext
