// Host-side argument checks of the ToMe ops, shared by the CPU and CUDA glue.
#pragma once
#include <optional>
#include <string>

#include "vtp_ext/stable_utils.h"
#include "vtp_ext/tome_math.h"

namespace vtp_ext {

inline TomeMode parse_tome_mode(const std::string& mode, const char* op) {
  if (mode == "wavg") return TomeMode::kWAvg;
  if (mode == "mean") return TomeMode::kMean;
  if (mode == "sum") return TomeMode::kSum;
  STD_TORCH_CHECK(false, op, ": mode must be \"wavg\", \"mean\" or \"sum\", got \"", mode, "\"");
  return TomeMode::kWAvg;
}

inline void check_tokens(const Tensor& x, const char* op, const char* arg) {
  check_strided(x, op, arg);
  STD_TORCH_CHECK(x.dim() == 3, op, ": ", arg, " must have shape [B, N, C] (3 dimensions), got ", x.dim(),
                  " dimension(s)");
  check_floating(x, op, arg);
}

inline void check_index(const Tensor& t, int64_t B, int64_t len, const char* op, const char* arg) {
  check_strided(t, op, arg);
  STD_TORCH_CHECK(t.scalar_type() == ScalarType::Long, op, ": ", arg, " must be int64, got ", dtype_name(t.scalar_type()));
  STD_TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == len, op, ": ", arg, " must have shape [", B, ", ",
                  len, "], got ", shape_str(t));
}

// A merge plan over N tokens: na = ceil(N/2) sources, nb = floor(N/2) destinations, r merged.
struct TomePlanShape {
  int64_t B, N, na, nb, r, n_out;
};

inline TomePlanShape check_tome_plan(int64_t B, int64_t N, const Tensor& unm, const Tensor& src, const Tensor& dst,
                                     const char* op) {
  TomePlanShape s{B, N, (N + 1) / 2, N / 2, src.dim() == 2 ? src.size(1) : -1, 0};
  STD_TORCH_CHECK(s.r >= 0 && s.r <= s.na, op, ": src_idx must have shape [B, r] with 0 <= r <= ceil(N/2) = ", s.na,
                  ", got ", shape_str(src));
  check_index(src, B, s.r, op, "src_idx");
  check_index(dst, B, s.r, op, "dst_idx");
  check_index(unm, B, s.na - s.r, op, "unm_idx");
  s.n_out = N - s.r;
  return s;
}

// Index values are checked where they can be read without a device synchronisation (CPU tensors);
// plans built by bipartite_matching are valid by construction.
inline void check_tome_plan_values(const TomePlanShape& s, const Tensor& unm, const Tensor& src, const Tensor& dst,
                                   const char* op) {
  if (!unm.is_cpu()) return;
  const Tensor u = torch::stable::contiguous(unm), a = torch::stable::contiguous(src), d = torch::stable::contiguous(dst);
  const int64_t* up = static_cast<const int64_t*>(u.const_data_ptr());
  const int64_t* ap = static_cast<const int64_t*>(a.const_data_ptr());
  const int64_t* dp = static_cast<const int64_t*>(d.const_data_ptr());
  for (int64_t i = 0; i < s.B * (s.na - s.r); ++i)
    STD_TORCH_CHECK(up[i] >= 0 && up[i] < s.na, op, ": unm_idx values must be source indices in [0, ", s.na, "), got ", up[i]);
  for (int64_t i = 0; i < s.B * s.r; ++i) {
    STD_TORCH_CHECK(ap[i] >= 0 && ap[i] < s.na, op, ": src_idx values must be source indices in [0, ", s.na, "), got ", ap[i]);
    STD_TORCH_CHECK(dp[i] >= 0 && dp[i] < s.nb, op, ": dst_idx values must be destination indices in [0, ", s.nb,
                    "), got ", dp[i]);
  }
}

inline void check_size(const std::optional<Tensor>& size, const Tensor& x, int64_t N, const char* op, const char* arg) {
  if (!size.has_value()) return;
  check_strided(*size, op, arg);
  STD_TORCH_CHECK(size->dim() == 2 && size->size(0) == x.size(0) && size->size(1) == N, op, ": ", arg,
                  " must have shape [B, N] = [", x.size(0), ", ", N, "], got ", shape_str(*size));
  check_same_dtype(x, *size, op, "x", arg);
  check_same_device(x, *size, op, "x", arg);
}

// A checked plan with contiguous index tensors, on x's device.
struct TomePlanTensors {
  TomePlanShape s;
  Tensor unm, src, dst;
};

inline TomePlanTensors tome_plan_of(const Tensor& x, int64_t N, const Tensor& unm, const Tensor& src, const Tensor& dst,
                                    const char* op) {
  TomePlanTensors p{check_tome_plan(x.size(0), N, unm, src, dst, op), torch::stable::contiguous(unm),
                    torch::stable::contiguous(src), torch::stable::contiguous(dst)};
  check_same_device(x, unm, op, "x", "unm_idx");
  check_same_device(x, src, op, "x", "src_idx");
  check_same_device(x, dst, op, "x", "dst_idx");
  check_tome_plan_values(p.s, p.unm, p.src, p.dst, op);
  return p;
}

// Everything merge_backward checks beyond x and the plan: grad / out [B, N - r, D], sizes [B, N - r].
inline void check_tome_merge_backward(const TomePlanShape& s, const Tensor& x, const Tensor& grad, const Tensor& out,
                                      const Tensor& size_out, const std::optional<Tensor>& grad_size, const char* op) {
  check_tokens(grad, op, "grad");
  check_tokens(out, op, "out");
  for (const Tensor* t : {&grad, &out}) {
    STD_TORCH_CHECK(t->size(0) == s.B && t->size(1) == s.n_out && t->size(2) == x.size(2), op,
                    ": grad and out must have shape [B, N - r, D] = [", s.B, ", ", s.n_out, ", ", x.size(2), "], got ",
                    shape_str(*t));
    check_same_dtype(x, *t, op, "x", "grad/out");
    check_same_device(x, *t, op, "x", "grad/out");
  }
  check_size(size_out, x, s.n_out, op, "size_out");
  if (grad_size) check_size(grad_size, x, s.n_out, op, "grad_size");
}

}  // namespace vtp_ext
