// CPU glue of the ToMe ops: bipartite matching, merge and unmerge, and their backward ops.
#include <vector>

#include "cpu/glue.h"
#include "vtp_ext/tome.h"

namespace vtp_ext {
namespace {

using cpu::check_cpu;
using cpu::kernel_dtype;
using cpu::parallel;

std::tuple<Tensor, Tensor, Tensor> tome_match_cpu(const Tensor& metric_in, int64_t r, bool class_token,
                                                  bool distill_token) {
  constexpr const char* op = "vtp_ext.bipartite_matching";
  check_tokens(metric_in, op, "metric");
  check_cpu(metric_in, op, "metric");
  STD_TORCH_CHECK(r >= 0, op, ": r must be >= 0, got ", r);
  const Tensor metric = dense_last(metric_in);
  const int64_t B = metric.size(0), N = metric.size(1), C = metric.size(2);
  const int64_t na = (N + 1) / 2, nb = N / 2;
  r = tome_clamp_r(r, N, class_token, distill_token);
  Tensor unm = new_tensor(metric, {B, na - r}, ScalarType::Long);
  Tensor src = new_tensor(metric, {B, r}, ScalarType::Long), dst = new_tensor(metric, {B, r}, ScalarType::Long);
  if (B == 0 || na == 0) return {unm, src, dst};
  const size_t es = metric.scalar_type() == ScalarType::Double ? sizeof(double) : sizeof(float);
  const int64_t nbp = (nb + 15) / 16 * 16;
  // O(N * C) workspace (unit-norm copies); the O(N^2) score matrix is never formed.
  std::vector<unsigned char> work_a(B * na * C * es), work_bt(B * C * nbp * es, 0), best(B * na * es);
  std::vector<int64_t> best_idx(B * na);
  const cpu::TomeMatchArgs args{metric.const_data_ptr(), kernel_dtype(metric.scalar_type()), B, N, C, na, nb, nbp, r,
                                metric.stride(0), metric.stride(1), class_token, distill_token,
                                work_a.data(), work_bt.data(), best.data(), best_idx.data(),
                                static_cast<int64_t*>(unm.mutable_data_ptr()),
                                static_cast<int64_t*>(src.mutable_data_ptr()),
                                static_cast<int64_t*>(dst.mutable_data_ptr())};
  const auto& k = cpu::kernels();
  parallel(B * N, 2 * C, [&](int64_t b, int64_t e) { k.tome_normalize(args, b, e); });
  parallel(B * ((na + 3) / 4), 4 * C * nbp, [&](int64_t b, int64_t e) { k.tome_best(args, b, e); });
  parallel(B, na * na, [&](int64_t b, int64_t e) { k.tome_plan(args, b, e); });
  return {unm, src, dst};
}

using Plan = TomePlanTensors;

cpu::TomeMergeArgs merge_args(const Plan& p, const Tensor& x, int64_t D, TomeMode mode, bool distill_token) {
  cpu::TomeMergeArgs a{};
  a.dtype = kernel_dtype(x.scalar_type());
  a.mode = mode;
  a.B = p.s.B; a.N = p.s.N; a.D = D; a.na = p.s.na; a.nb = p.s.nb; a.r = p.s.r; a.n_out = p.s.n_out;
  a.distill_token = distill_token;
  a.unm_idx = static_cast<const int64_t*>(p.unm.const_data_ptr());
  a.src_idx = static_cast<const int64_t*>(p.src.const_data_ptr());
  a.dst_idx = static_cast<const int64_t*>(p.dst.const_data_ptr());
  return a;
}

std::tuple<Tensor, Tensor> tome_merge_cpu(const Tensor& x_in, const std::optional<Tensor>& size, const Tensor& unm_idx,
                                          const Tensor& src_idx, const Tensor& dst_idx, std::string mode,
                                          bool distill_token) {
  constexpr const char* op = "vtp_ext.merge";
  check_tokens(x_in, op, "x");
  check_cpu(x_in, op, "x");
  const TomeMode m = parse_tome_mode(mode, op);
  check_size(size, x_in, x_in.size(1), op, "size");
  const Plan p = tome_plan_of(x_in, x_in.size(1), unm_idx, src_idx, dst_idx, op);
  const Tensor x = dense_last(x_in);
  const int64_t D = x.size(2);
  Tensor out = new_tensor(x, {p.s.B, p.s.n_out, D}, x.scalar_type());
  Tensor size_out = new_tensor(x, {p.s.B, p.s.n_out}, x.scalar_type());
  cpu::TomeMergeArgs a = merge_args(p, x, D, m, distill_token);
  a.x = x.const_data_ptr(); a.x_batch_stride = x.stride(0); a.x_token_stride = x.stride(1);
  if (size) { a.size = size->const_data_ptr(); a.size_batch_stride = size->stride(0); a.size_token_stride = size->stride(1); }
  a.out = out.mutable_data_ptr();
  a.size_out = size_out.mutable_data_ptr();
  const auto& k = cpu::kernels();
  parallel(p.s.B * p.s.n_out, D * 2, [&](int64_t b, int64_t e) { k.tome_merge(a, b, e); });
  return {out, size_out};
}

std::tuple<Tensor, Tensor> tome_merge_backward_cpu(const Tensor& grad_out_in, const std::optional<Tensor>& grad_size_out,
                                                   const Tensor& x_in, const std::optional<Tensor>& size,
                                                   const Tensor& out_in, const Tensor& size_out,
                                                   const Tensor& unm_idx, const Tensor& src_idx, const Tensor& dst_idx,
                                                   std::string mode, bool distill_token) {
  constexpr const char* op = "vtp_ext.merge_backward";
  check_tokens(x_in, op, "x");
  check_cpu(x_in, op, "x");
  const TomeMode m = parse_tome_mode(mode, op);
  check_size(size, x_in, x_in.size(1), op, "size");
  const Plan p = tome_plan_of(x_in, x_in.size(1), unm_idx, src_idx, dst_idx, op);
  check_tome_merge_backward(p.s, x_in, grad_out_in, out_in, size_out, grad_size_out, op);
  const Tensor x = dense_last(x_in), g = dense_last(grad_out_in), out = dense_last(out_in);
  const int64_t D = x.size(2);
  Tensor grad_x = new_tensor(x, {p.s.B, p.s.N, D}, x.scalar_type());
  Tensor grad_size = new_tensor(x, {p.s.B, p.s.N}, x.scalar_type());
  std::vector<int64_t> positions(p.s.B * p.s.N);
  std::vector<int32_t> counts(p.s.B * p.s.n_out);
  cpu::TomeMergeArgs a = merge_args(p, x, D, m, distill_token);
  a.x = x.const_data_ptr(); a.x_batch_stride = x.stride(0); a.x_token_stride = x.stride(1);
  if (size) { a.size = size->const_data_ptr(); a.size_batch_stride = size->stride(0); a.size_token_stride = size->stride(1); }
  a.grad_out = g.const_data_ptr(); a.g_batch_stride = g.stride(0); a.g_token_stride = g.stride(1);
  if (grad_size_out) {
    a.grad_size_out = grad_size_out->const_data_ptr();
    a.gs_batch_stride = grad_size_out->stride(0); a.gs_token_stride = grad_size_out->stride(1);
  }
  a.merged = out.const_data_ptr(); a.m_batch_stride = out.stride(0); a.m_token_stride = out.stride(1);
  a.merged_size = size_out.const_data_ptr(); a.ms_batch_stride = size_out.stride(0); a.ms_token_stride = size_out.stride(1);
  a.grad_x = grad_x.mutable_data_ptr();
  a.grad_size = grad_size.mutable_data_ptr();
  a.positions = positions.data();
  a.counts = counts.data();
  const auto& k = cpu::kernels();
  parallel(p.s.B, p.s.N, [&](int64_t b, int64_t e) { k.tome_positions(a, b, e); });
  parallel(p.s.B * p.s.N, D * 3, [&](int64_t b, int64_t e) { k.tome_merge_bwd(a, b, e); });
  return {grad_x, grad_size};
}

Tensor tome_unmerge_cpu(const Tensor& y_in, const Tensor& unm_idx, const Tensor& src_idx, const Tensor& dst_idx,
                        int64_t n, bool distill_token) {
  constexpr const char* op = "vtp_ext.unmerge";
  check_tokens(y_in, op, "x_merged");
  check_cpu(y_in, op, "x_merged");
  STD_TORCH_CHECK(n >= 0, op, ": n must be >= 0, got ", n);
  const Plan p = tome_plan_of(y_in, n, unm_idx, src_idx, dst_idx, op);
  STD_TORCH_CHECK(y_in.size(1) == p.s.n_out, op, ": x_merged must have N - r = ", p.s.n_out, " tokens, got ", y_in.size(1));
  const Tensor y = dense_last(y_in);
  const int64_t D = y.size(2);
  Tensor out = new_tensor(y, {p.s.B, n, D}, y.scalar_type());
  std::vector<int64_t> positions(p.s.B * n);
  std::vector<int32_t> counts(p.s.B * p.s.n_out);
  cpu::TomeMergeArgs a = merge_args(p, y, D, TomeMode::kSum, distill_token);
  a.x = y.const_data_ptr(); a.x_batch_stride = y.stride(0); a.x_token_stride = y.stride(1);
  a.out = out.mutable_data_ptr();
  a.positions = positions.data();
  a.counts = counts.data();
  const auto& k = cpu::kernels();
  parallel(p.s.B, n, [&](int64_t b, int64_t e) { k.tome_positions(a, b, e); });
  parallel(p.s.B * n, D, [&](int64_t b, int64_t e) { k.tome_unmerge(a, b, e); });
  return out;
}

Tensor tome_unmerge_backward_cpu(const Tensor& grad_in, const Tensor& unm_idx, const Tensor& src_idx,
                                 const Tensor& dst_idx, bool distill_token) {
  constexpr const char* op = "vtp_ext.unmerge_backward";
  check_tokens(grad_in, op, "grad");
  check_cpu(grad_in, op, "grad");
  const Plan p = tome_plan_of(grad_in, grad_in.size(1), unm_idx, src_idx, dst_idx, op);
  const Tensor g = dense_last(grad_in);
  const int64_t D = g.size(2);
  Tensor grad_y = new_tensor(g, {p.s.B, p.s.n_out, D}, g.scalar_type());
  cpu::TomeMergeArgs a = merge_args(p, g, D, TomeMode::kSum, distill_token);
  a.grad_out = g.const_data_ptr(); a.g_batch_stride = g.stride(0); a.g_token_stride = g.stride(1);
  a.grad_x = grad_y.mutable_data_ptr();
  const auto& k = cpu::kernels();
  parallel(p.s.B * p.s.n_out, D * 2, [&](int64_t b, int64_t e) { k.tome_unmerge_bwd(a, b, e); });
  return grad_y;
}

}  // namespace
}  // namespace vtp_ext

STABLE_TORCH_LIBRARY_IMPL(vtp_ext, CPU, m) {
  m.impl("tome_match", TORCH_BOX(&vtp_ext::tome_match_cpu));
  m.impl("tome_merge", TORCH_BOX(&vtp_ext::tome_merge_cpu));
  m.impl("tome_merge_backward", TORCH_BOX(&vtp_ext::tome_merge_backward_cpu));
  m.impl("tome_unmerge", TORCH_BOX(&vtp_ext::tome_unmerge_cpu));
  m.impl("tome_unmerge_backward", TORCH_BOX(&vtp_ext::tome_unmerge_backward_cpu));
}
