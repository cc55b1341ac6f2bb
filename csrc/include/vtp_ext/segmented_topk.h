// Host-side argument checks and the selection plan of segmented_topk, shared by the CPU and CUDA
// glue so both backends reject the same inputs with the same messages.
//
// Whether a call is valid depends on the *values* of offsets and k (increasing offsets, k >= 0, row
// sums <= max_k), so they are read on the host; a device tensor is copied there first (one small
// synchronising copy). The plan computed from them -- each (row, segment)'s clamped k and where its
// selection starts in the output row -- is what the kernels consume, so no kernel needs a prefix sum.
#pragma once
#include <cstdint>
#include <string>

#include "vtp_ext/stable_utils.h"

namespace vtp_ext {

inline bool parse_topk_order(const std::string& order, const char* op) {
  STD_TORCH_CHECK(order == "score" || order == "index", op, ": order must be \"score\" or \"index\", got \"",
                  order, "\"");
  return order == "index";
}

// A contiguous CPU copy of t (t itself when it already is one).
inline Tensor host_contiguous(const Tensor& t) {
  Tensor h = t.is_cpu() ? t : torch::stable::to(t, torch::stable::Device(torch::headeronly::DeviceType::CPU));
  return h.is_contiguous() ? h : torch::stable::contiguous(h);
}

inline Tensor host_empty_long(int64_t n) {
  const int64_t size[1] = {n};
  return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(size, 1), ScalarType::Long, std::nullopt,
                              torch::stable::Device(torch::headeronly::DeviceType::CPU));
}

inline void check_index_tensor_device(const Tensor& t, const Tensor& data, const char* op, const char* arg,
                                      const char* data_arg) {
  STD_TORCH_CHECK(t.is_cpu() || (t.device().type() == data.device().type() &&
                                 t.get_device_index() == data.get_device_index()),
                  op, ": ", arg, " must be a CPU tensor or on the device of ", data_arg);
}

struct SegmentedTopkPlan {
  // int64 on the CPU: [offsets (S+1) | clamped k per (row, segment) (B*S) | start of that selection
  // within the output row (B*S)], row-major over (row, segment).
  Tensor plan;
  Tensor lengths;  // int64 [B] on the CPU: selected entries per row
  int64_t B = 0, L = 0, S = 0;
  int64_t max_segment = 0;  // longest segment
  int64_t max_select = 0;   // largest clamped k of any (row, segment)
  bool by_index = false;

  const int64_t* offsets() const { return plan.const_data_ptr<int64_t>(); }
  const int64_t* seg_k() const { return offsets() + S + 1; }
  const int64_t* seg_start() const { return seg_k() + B * S; }
};

inline void check_segmented_topk_scores(const Tensor& scores, const char* op) {
  check_strided(scores, op, "scores");
  STD_TORCH_CHECK(scores.dim() == 2, op, ": scores must have shape [B, L] (2 dimensions), got ", scores.dim(),
                  " dimension(s)");
  check_floating(scores, op, "scores");
  // Kernels address a segment's entries with 32-bit local indices.
  STD_TORCH_CHECK(scores.size(1) <= INT32_MAX, op, ": scores must have at most 2^31-1 columns, got ",
                  scores.size(1));
}

inline SegmentedTopkPlan plan_segmented_topk(const Tensor& scores, const Tensor& offsets, const Tensor& k,
                                             int64_t max_k, const std::string& order, const char* op) {
  check_segmented_topk_scores(scores, op);
  SegmentedTopkPlan p;
  p.by_index = parse_topk_order(order, op);
  p.B = scores.size(0);
  p.L = scores.size(1);
  check_strided(offsets, op, "offsets");
  STD_TORCH_CHECK(offsets.scalar_type() == ScalarType::Long, op, ": offsets must be int64, got ",
                  dtype_name(offsets.scalar_type()));
  STD_TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1, op,
                  ": offsets must have shape [S+1] (1 dimension, at least one element), got ", shape_str(offsets));
  check_index_tensor_device(offsets, scores, op, "offsets", "scores");
  p.S = offsets.size(0) - 1;
  check_strided(k, op, "k");
  STD_TORCH_CHECK(k.scalar_type() == ScalarType::Long, op, ": k must be int64, got ", dtype_name(k.scalar_type()));
  STD_TORCH_CHECK(k.dim() == 2 && k.size(0) == p.B && k.size(1) == p.S, op, ": k must have shape [B, S] = [", p.B,
                  ", ", p.S, "], got ", shape_str(k));
  check_index_tensor_device(k, scores, op, "k", "scores");
  STD_TORCH_CHECK(max_k >= 0, op, ": max_k must be >= 0, got ", max_k);

  const Tensor off_h = host_contiguous(offsets);
  const Tensor k_h = host_contiguous(k);
  const int64_t* off = off_h.const_data_ptr<int64_t>();
  const int64_t* kk = k_h.const_data_ptr<int64_t>();
  STD_TORCH_CHECK(off[0] == 0, op, ": offsets[0] must be 0, got ", off[0]);
  for (int64_t s = 0; s < p.S; ++s) {
    STD_TORCH_CHECK(off[s + 1] >= off[s], op, ": offsets must be non-decreasing, got offsets[", s, "] = ", off[s],
                    " > offsets[", s + 1, "] = ", off[s + 1]);
    if (off[s + 1] - off[s] > p.max_segment) p.max_segment = off[s + 1] - off[s];
  }
  STD_TORCH_CHECK(off[p.S] == p.L, op, ": offsets[-1] must equal L = scores.shape[1] = ", p.L, ", got ", off[p.S]);

  p.plan = host_empty_long(p.S + 1 + 2 * p.B * p.S);
  p.lengths = host_empty_long(p.B);
  int64_t* plan = p.plan.mutable_data_ptr<int64_t>();
  int64_t* seg_k = plan + p.S + 1;
  int64_t* seg_start = seg_k + p.B * p.S;
  int64_t* lengths = p.lengths.mutable_data_ptr<int64_t>();
  for (int64_t s = 0; s <= p.S; ++s) plan[s] = off[s];
  for (int64_t b = 0; b < p.B; ++b) {
    int64_t requested = 0, selected = 0;
    bool saturated = false;
    for (int64_t s = 0; s < p.S; ++s) {
      const int64_t want = kk[b * p.S + s];
      STD_TORCH_CHECK(want >= 0, op, ": k must be >= 0, got k[", b, ", ", s, "] = ", want);
      saturated = saturated || __builtin_add_overflow(requested, want, &requested);
      const int64_t len = off[s + 1] - off[s];
      const int64_t take = want < len ? want : len;
      seg_k[b * p.S + s] = take;
      seg_start[b * p.S + s] = selected;
      selected += take;
      if (take > p.max_select) p.max_select = take;
    }
    STD_TORCH_CHECK(!saturated && requested <= max_k, op,
                    ": the sum of k over the segments of a row must be <= max_k = ", max_k, ", got ",
                    saturated ? std::string("more than 2^63-1") : std::to_string(requested), " in row ", b);
    lengths[b] = selected;
  }
  return p;
}

// segmented_topk_backward and gather_tokens_backward share their checks: both scatter-add rows of
// `grad` [B, K, D] into [B, L, D] at `indices` [B, K] (-1 = skipped).
inline void check_scatter_indices(const Tensor& indices, int64_t B, int64_t K, const char* op) {
  check_strided(indices, op, "indices");
  STD_TORCH_CHECK(indices.scalar_type() == ScalarType::Long, op, ": indices must be int64, got ",
                  dtype_name(indices.scalar_type()));
  STD_TORCH_CHECK(indices.dim() == 2 && indices.size(0) == B && indices.size(1) == K, op,
                  ": indices must have shape [B, K] = [", B, ", ", K, "], got ", shape_str(indices));
  // j (a position in [0, K)) is kept in 32 bits by the CUDA inverse map.
  STD_TORCH_CHECK(K < 0x7F7F7F7F, op, ": indices must have fewer than 2139062143 columns, got ", K);
}

inline void check_segmented_topk_backward(const Tensor& grad_values, const Tensor& indices, int64_t L,
                                          const char* op) {
  check_strided(grad_values, op, "grad_values");
  STD_TORCH_CHECK(grad_values.dim() == 2, op, ": grad_values must have shape [B, max_k] (2 dimensions), got ",
                  grad_values.dim(), " dimension(s)");
  check_floating(grad_values, op, "grad_values");
  check_scatter_indices(indices, grad_values.size(0), grad_values.size(1), op);
  check_same_device(grad_values, indices, op, "grad_values", "indices");
  STD_TORCH_CHECK(L >= 0 && L <= INT32_MAX, op, ": L must be in [0, 2^31-1], got ", L);
}

}  // namespace vtp_ext
