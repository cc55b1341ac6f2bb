// CUDA glue of blur_downsample (forward and backward): checks (shared with the CPU op), operator
// tables uploaded to the device, launch. Both directions use the separable kernels in
// separable.cuh; the backward uploads the transposed tables.
#include "cuda/glue.h"
#include "cuda/separable.cuh"
#include "vtp_ext/blur_downsample.h"

namespace vtp_ext::cuda {
namespace {

// A host vector as a 1-d tensor on `device`. On a GPU this is a synchronous copy from pageable
// memory, so `v` may be freed afterwards; under the CPU test runtime the tensor aliases `v`, which
// the caller keeps alive until the kernel has run (launches there are synchronous).
template <typename V>
Tensor upload(V& v, ScalarType dtype, const Tensor& like) {
  const int64_t n = static_cast<int64_t>(v.size()), stride = 1;
  Tensor host = torch::stable::from_blob(v.data(), torch::headeronly::IntHeaderOnlyArrayRef(&n, 1),
                                         torch::headeronly::IntHeaderOnlyArrayRef(&stride, 1),
                                         torch::stable::Device(torch::headeronly::DeviceType::CPU), dtype);
  return torch::stable::to(host, like.device());
}

template <typename T>
void apply(const ImageView& in, const ImageView& ov, const AxisOperator& ay, const AxisOperator& ax, const char* op) {
  using acc_t = acc_of<T>;
  const ScalarType wtype = sizeof(acc_t) == 8 ? ScalarType::Double : ScalarType::Float;
  const AxisTables<acc_t> ty(ay), tx(ax);
  const int64_t align = in.channels == 1 ? Pack16<T>::kN : 1;
  std::vector<int32_t> ints;
  const auto append = [&](const std::vector<int32_t>& v) {
    const size_t at = ints.size();
    ints.insert(ints.end(), v.begin(), v.end());
    return static_cast<int64_t>(at);
  };
  const int64_t o_yi = append(ty.index), o_yc = append(ty.count), o_xi = append(tx.index), o_xc = append(tx.count);
  const std::vector<int32_t> yt = tile_footprints(ay, kSepTileRows, 1), xt = tile_footprints(ax, kSepTileCols, align);
  const int64_t o_yt = append(yt), o_xt = append(xt);
  std::vector<acc_t> weights(ty.weight);
  weights.insert(weights.end(), tx.weight.begin(), tx.weight.end());
  Tensor d_ints = upload(ints, ScalarType::Int, in.t), d_w = upload(weights, wtype, in.t);
  const int32_t* ip = static_cast<const int32_t*>(d_ints.const_data_ptr());
  const acc_t* wp = static_cast<const acc_t*>(d_w.const_data_ptr());
  int64_t fp_rows = 1, fp_cols = 1;
  for (size_t t = 0; t < yt.size(); t += 2) fp_rows = std::max<int64_t>(fp_rows, yt[t + 1] - yt[t] + 1);
  for (size_t t = 0; t < xt.size(); t += 2) fp_cols = std::max<int64_t>(fp_cols, xt[t + 1] - xt[t] + 1);
  const SeparableParams<acc_t> p{in.planes, ov.planes, in.n_planes, in.channels,
                                 ay.n_in, ax.n_in, in.row_stride,
                                 ay.n_out, ax.n_out, ov.row_stride,
                                 ip + o_yi, wp, ip + o_yc, ty.taps,
                                 ip + o_xi, wp + ty.weight.size(), ip + o_xc, tx.taps,
                                 ip + o_yt, ip + o_xt, fp_rows, fp_cols};
  check_launch(launch_separable<T>(static_cast<const T*>(in.t.const_data_ptr()),
                                   static_cast<T*>(ov.t.mutable_data_ptr()), p, current_stream(in.t),
                                   test_flag("VTP_CUCPU_FORCE_DIRECT"), max_blocks(65535)),
               op);
}

Tensor apply_separable(const Tensor& x, const AxisOperator& ay, const AxisOperator& ax, const char* op) {
  const ImageView in = image_view(x);
  Tensor out = empty_image(x, in.channels_last, ay.n_out, ax.n_out, x.scalar_type());
  if (out.numel() == 0) return out;
  const ImageView ov = image_view(out, in.channels_last ? 1 : 0);
  dispatch_types<true>(x.scalar_type(), [&](auto tag) { apply<decltype(tag)>(in, ov, ay, ax, op); });
  return out;
}

Tensor blur_downsample_cuda(const Tensor& x, std::string mode, double sigma, int64_t kernel_size, std::string border) {
  constexpr const char* op = "vtp_ext.blur_downsample";
  const BlurDownsampleConfig cfg = check_blur_downsample(x, mode, sigma, kernel_size, border, op);
  check_device(x, op, "x");
  const DeviceScope scope(x);
  const bool fpos = x.scalar_type() != ScalarType::Double;
  return apply_separable(x, blur_downsample_axis(x.size(2), cfg, fpos), blur_downsample_axis(x.size(3), cfg, fpos), op);
}

Tensor blur_downsample_backward_cuda(const Tensor& grad, int64_t height, int64_t width, std::string mode, double sigma,
                                     int64_t kernel_size, std::string border) {
  constexpr const char* op = "vtp_ext.blur_downsample_backward";
  const BlurDownsampleConfig cfg = check_blur_downsample_backward(grad, height, width, mode, sigma, kernel_size, border, op);
  check_device(grad, op, "grad");
  const DeviceScope scope(grad);
  const bool fpos = grad.scalar_type() != ScalarType::Double;
  return apply_separable(grad, transpose(blur_downsample_axis(height, cfg, fpos)),
                         transpose(blur_downsample_axis(width, cfg, fpos)), op);
}

}  // namespace
}  // namespace vtp_ext::cuda

STABLE_TORCH_LIBRARY_IMPL(VTP_CUDA_NS, VTP_CUDA_KEY, m) {
  m.impl("blur_downsample", TORCH_BOX(&vtp_ext::cuda::blur_downsample_cuda));
  m.impl("blur_downsample_backward", TORCH_BOX(&vtp_ext::cuda::blur_downsample_backward_cuda));
}
