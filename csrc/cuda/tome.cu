// CUDA glue of the ToMe ops: checks (shared with the CPU ops), workspaces, launches.
#include "cuda/glue.h"
#include "cuda/tome.cuh"
#include "vtp_ext/tome.h"

namespace vtp_ext::cuda {
namespace {

void check_grid(int64_t rows, int64_t B, const char* op) {
  STD_TORCH_CHECK(B <= 65535, op, ": the CUDA kernels take at most 65535 batch entries, got ", B);
  STD_TORCH_CHECK(rows <= (int64_t{1} << 31) - 1, op, ": too many tokens for one launch (", rows, ")");
}

std::tuple<Tensor, Tensor, Tensor> tome_match_cuda(const Tensor& metric_in, int64_t r, bool class_token,
                                                   bool distill_token) {
  constexpr const char* op = "vtp_ext.bipartite_matching";
  check_tokens(metric_in, op, "metric");
  check_device(metric_in, op, "metric");
  STD_TORCH_CHECK(r >= 0, op, ": r must be >= 0, got ", r);
  const DeviceScope scope(metric_in);
  const Tensor metric = dense_last(metric_in);
  const int64_t B = metric.size(0), N = metric.size(1), C = metric.size(2), na = (N + 1) / 2, nb = N / 2;
  check_grid(na, B, op);
  r = tome_clamp_r(r, N, class_token, distill_token);
  Tensor unm = new_tensor(metric, {B, na - r}, ScalarType::Long);
  Tensor src = new_tensor(metric, {B, r}, ScalarType::Long), dst = new_tensor(metric, {B, r}, ScalarType::Long);
  if (B == 0 || na == 0) return {unm, src, dst};
  const ScalarType acc = metric.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  // O(N * C) workspace (unit-norm copies); the O(N^2) score matrix is never formed.
  Tensor wa = new_tensor(metric, {B, na, C}, acc), wb = new_tensor(metric, {B, nb > 0 ? nb : 1, C}, acc);
  Tensor best = new_tensor(metric, {B, na}, acc), best_idx = new_tensor(metric, {B, na}, ScalarType::Long);
  Tensor rank = new_tensor(metric, {B, na}, ScalarType::Long);
  dispatch_types(metric.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = acc_of<T>;
    check_launch(launch_tome_match<T>(cptr<T>(metric), metric.stride(0), metric.stride(1), B, N, C, r, class_token,
                                      distill_token, mptr<A>(wa), mptr<A>(wb), mptr<A>(best), mptr<int64_t>(best_idx),
                                      mptr<int64_t>(rank), mptr<int64_t>(unm), mptr<int64_t>(src), mptr<int64_t>(dst),
                                      current_stream(metric), max_blocks(65535)),
                 op);
  });
  return {unm, src, dst};
}

TomePlanView view_of(const TomePlanTensors& p, bool distill_token) {
  return {cptr<int64_t>(p.unm), cptr<int64_t>(p.src), cptr<int64_t>(p.dst), p.s.B, p.s.N, p.s.na, p.s.nb, p.s.r,
          p.s.n_out, distill_token};
}

TomePlanTensors plan_of(const Tensor& x, int64_t N, const Tensor& unm, const Tensor& src, const Tensor& dst,
                        const char* op) {
  TomePlanTensors p = tome_plan_of(x, N, unm, src, dst, op);
  check_grid(std::max(N, p.s.n_out), p.s.B, op);
  return p;
}

// positions [B, N] and counts [B, n_out] of a plan (see tome_positions_kernel).
std::pair<Tensor, Tensor> positions_of(const TomePlanTensors& p, const Tensor& like, bool distill_token, const char* op) {
  Tensor pos = new_tensor(like, {p.s.B, p.s.N}, ScalarType::Long);
  Tensor cnt = new_tensor(like, {p.s.B, p.s.n_out > 0 ? p.s.n_out : 1}, ScalarType::Int);
  if (p.s.B > 0) {
    VTP_LAUNCH(tome_positions_kernel, unsigned(p.s.B), 256, 0, current_stream(like), view_of(p, distill_token),
               mptr<int64_t>(pos), mptr<int32_t>(cnt));
    check_launch(cudaGetLastError(), op);
  }
  return {pos, cnt};
}

dim3 row_grid(int64_t rows, int64_t B) { return dim3(unsigned(rows), unsigned(B)); }

std::tuple<Tensor, Tensor> tome_merge_cuda(const Tensor& x_in, const std::optional<Tensor>& size, const Tensor& unm_idx,
                                           const Tensor& src_idx, const Tensor& dst_idx, std::string mode,
                                           bool distill_token) {
  constexpr const char* op = "vtp_ext.merge";
  check_tokens(x_in, op, "x");
  check_device(x_in, op, "x");
  const TomeMode m = parse_tome_mode(mode, op);
  check_size(size, x_in, x_in.size(1), op, "size");
  const DeviceScope scope(x_in);
  const TomePlanTensors p = plan_of(x_in, x_in.size(1), unm_idx, src_idx, dst_idx, op);
  const Tensor x = dense_last(x_in);
  const int64_t D = x.size(2);
  Tensor out = new_tensor(x, {p.s.B, p.s.n_out, D}, x.scalar_type());
  Tensor size_out = new_tensor(x, {p.s.B, p.s.n_out}, x.scalar_type());
  if (p.s.B == 0 || p.s.n_out == 0) return {out, size_out};
  dispatch_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    VTP_LAUNCH(tome_merge_kernel<T>, row_grid(p.s.n_out, p.s.B), kTomeRowThreads, 0, current_stream(x),
               view_of(p, distill_token), m, cptr<T>(x), x.stride(0), x.stride(1), size ? cptr<T>(*size) : nullptr,
               size ? size->stride(0) : 0, size ? size->stride(1) : 0, D, mptr<T>(out), mptr<T>(size_out));
    check_launch(cudaGetLastError(), op);
  });
  return {out, size_out};
}

std::tuple<Tensor, Tensor> tome_merge_backward_cuda(const Tensor& grad_in, const std::optional<Tensor>& grad_size_out,
                                                    const Tensor& x_in, const std::optional<Tensor>& size,
                                                    const Tensor& out_in, const Tensor& size_out,
                                                    const Tensor& unm_idx, const Tensor& src_idx, const Tensor& dst_idx,
                                                    std::string mode, bool distill_token) {
  constexpr const char* op = "vtp_ext.merge_backward";
  check_tokens(x_in, op, "x");
  check_device(x_in, op, "x");
  const TomeMode m = parse_tome_mode(mode, op);
  check_size(size, x_in, x_in.size(1), op, "size");
  const DeviceScope scope(x_in);
  const TomePlanTensors p = plan_of(x_in, x_in.size(1), unm_idx, src_idx, dst_idx, op);
  check_tome_merge_backward(p.s, x_in, grad_in, out_in, size_out, grad_size_out, op);
  const Tensor x = dense_last(x_in), g = dense_last(grad_in), out = dense_last(out_in);
  const int64_t D = x.size(2);
  Tensor grad_x = new_tensor(x, {p.s.B, p.s.N, D}, x.scalar_type());
  Tensor grad_size = new_tensor(x, {p.s.B, p.s.N}, x.scalar_type());
  if (p.s.B == 0 || p.s.N == 0) return {grad_x, grad_size};
  const auto [pos, cnt] = positions_of(p, x, distill_token, op);
  dispatch_types(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const auto& gs = grad_size_out;
    VTP_LAUNCH(tome_merge_bwd_kernel<T>, row_grid(p.s.N, p.s.B), kTomeRowThreads, 0, current_stream(x),
               view_of(p, distill_token), m, cptr<int64_t>(pos), cptr<int32_t>(cnt), cptr<T>(g), g.stride(0), g.stride(1),
               gs ? cptr<T>(*gs) : nullptr, gs ? gs->stride(0) : 0, gs ? gs->stride(1) : 0, cptr<T>(x), x.stride(0),
               x.stride(1), size ? cptr<T>(*size) : nullptr, size ? size->stride(0) : 0, size ? size->stride(1) : 0,
               cptr<T>(out), out.stride(0), out.stride(1), cptr<T>(size_out), size_out.stride(0), size_out.stride(1), D,
               mptr<T>(grad_x), mptr<T>(grad_size));
    check_launch(cudaGetLastError(), op);
  });
  return {grad_x, grad_size};
}

Tensor tome_unmerge_cuda(const Tensor& y_in, const Tensor& unm_idx, const Tensor& src_idx, const Tensor& dst_idx,
                         int64_t n, bool distill_token) {
  constexpr const char* op = "vtp_ext.unmerge";
  check_tokens(y_in, op, "x_merged");
  check_device(y_in, op, "x_merged");
  STD_TORCH_CHECK(n >= 0, op, ": n must be >= 0, got ", n);
  const DeviceScope scope(y_in);
  const TomePlanTensors p = plan_of(y_in, n, unm_idx, src_idx, dst_idx, op);
  STD_TORCH_CHECK(y_in.size(1) == p.s.n_out, op, ": x_merged must have N - r = ", p.s.n_out, " tokens, got ", y_in.size(1));
  const Tensor y = dense_last(y_in);
  const int64_t D = y.size(2);
  Tensor out = new_tensor(y, {p.s.B, n, D}, y.scalar_type());
  if (p.s.B == 0 || n == 0) return out;
  const auto [pos, cnt] = positions_of(p, y, distill_token, op);
  dispatch_types(y.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    VTP_LAUNCH(tome_unmerge_kernel<T>, row_grid(n, p.s.B), kTomeRowThreads, 0, current_stream(y),
               view_of(p, distill_token), cptr<int64_t>(pos), cptr<T>(y), y.stride(0), y.stride(1), D, mptr<T>(out));
    check_launch(cudaGetLastError(), op);
  });
  return out;
}

Tensor tome_unmerge_backward_cuda(const Tensor& grad_in, const Tensor& unm_idx, const Tensor& src_idx,
                                  const Tensor& dst_idx, bool distill_token) {
  constexpr const char* op = "vtp_ext.unmerge_backward";
  check_tokens(grad_in, op, "grad");
  check_device(grad_in, op, "grad");
  const DeviceScope scope(grad_in);
  const TomePlanTensors p = plan_of(grad_in, grad_in.size(1), unm_idx, src_idx, dst_idx, op);
  const Tensor g = dense_last(grad_in);
  const int64_t D = g.size(2);
  Tensor grad_y = new_tensor(g, {p.s.B, p.s.n_out, D}, g.scalar_type());
  if (p.s.B == 0 || p.s.n_out == 0) return grad_y;
  dispatch_types(g.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    VTP_LAUNCH(tome_unmerge_bwd_kernel<T>, row_grid(p.s.n_out, p.s.B), kTomeRowThreads, 0, current_stream(g),
               view_of(p, distill_token), cptr<T>(g), g.stride(0), g.stride(1), D, mptr<T>(grad_y));
    check_launch(cudaGetLastError(), op);
  });
  return grad_y;
}

}  // namespace
}  // namespace vtp_ext::cuda

STABLE_TORCH_LIBRARY_IMPL(VTP_CUDA_NS, VTP_CUDA_KEY, m) {
  m.impl("tome_match", TORCH_BOX(&vtp_ext::cuda::tome_match_cuda));
  m.impl("tome_merge", TORCH_BOX(&vtp_ext::cuda::tome_merge_cuda));
  m.impl("tome_merge_backward", TORCH_BOX(&vtp_ext::cuda::tome_merge_backward_cuda));
  m.impl("tome_unmerge", TORCH_BOX(&vtp_ext::cuda::tome_unmerge_cuda));
  m.impl("tome_unmerge_backward", TORCH_BOX(&vtp_ext::cuda::tome_unmerge_backward_cuda));
}
