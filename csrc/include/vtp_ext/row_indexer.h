// Addressing rows of a [..., D] tensor whose last dimension is dense but whose leading dimensions
// may have any strides (slices, transposed batch dims, expanded dims). Kernels index "row r" and
// this turns it into an element offset, so non-contiguous inputs need no copy.
#pragma once
#include <cstdint>

#include "vtp_ext/macros.h"

namespace vtp_ext {

struct RowIndexer {
  static constexpr int kMaxDims = 8;
  int32_t ndim = 0;                 // number of leading (row) dimensions, innermost last
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};   // in elements

  VTP_HD_INLINE int64_t offset(int64_t row) const {
    int64_t off = 0;
    for (int32_t d = ndim - 1; d >= 0; --d) {
      const int64_t s = sizes[d];
      off += (row % s) * strides[d];
      row /= s;
    }
    return off;
  }
};

}  // namespace vtp_ext
