// CPU glue of blur_downsample (forward and backward): checks, operator tables, threading. Both
// directions apply a separable operator with the same kernel (cpu/separable_kernels.h); the backward
// applies the transposed tables.
#include "cpu/glue.h"
#include "vtp_ext/blur_downsample.h"

namespace vtp_ext {
namespace {

using cpu::check_cpu;
using cpu::kernel_dtype;

// The weights in 1/16ths if every one is a whole number of them and every row's sum is at most 16
// (so that 255 * 16 * 16 bounds a 16-bit sum); empty otherwise. OpenCV's binomial qualifies at every
// size, borders included; kornia's and the Gaussian's weights do not.
std::vector<uint16_t> q4_weights(const std::vector<double>& weight, const std::vector<int32_t>& count, int64_t taps) {
  std::vector<uint16_t> q(weight.size(), 0);
  for (size_t r = 0; r < count.size(); ++r) {
    double sum = 0;
    for (int64_t t = 0; t < count[r]; ++t) {
      const double w = weight[r * taps + t] * 16;
      if (!(w >= 0 && w <= 16 && w == static_cast<double>(static_cast<int>(w)))) return {};
      q[r * taps + t] = static_cast<uint16_t>(w);
      sum += w;
    }
    if (sum > 16) return {};
  }
  return q;
}

template <typename acc_t>
void apply(const ImageView& in, Tensor& out, const ImageView& out_view, const AxisOperator& ay,
           const AxisOperator& ax) {
  const AxisTables<acc_t> ty(ay), tx(ax);
  std::vector<uint16_t> qy, qx, qs;
  if (in.t.scalar_type() == ScalarType::Byte) {
    qy = q4_weights(ay.weight, ay.count, ay.taps);
    qx = q4_weights(ax.weight, ax.count, ax.taps);
    const std::vector<int32_t> stencil_count{static_cast<int32_t>(tx.stencil.weight.size())};
    qs = q4_weights(tx.stencil.weight, stencil_count, static_cast<int64_t>(tx.stencil.weight.size()));
    if (qy.empty() || qx.empty() || (qs.empty() && !tx.stencil.weight.empty())) qy.clear();
  }
  const bool q4 = !qy.empty();
  const cpu::SeparableApplyArgs args{in.t.const_data_ptr(), out.mutable_data_ptr(), kernel_dtype(in.t.scalar_type()),
                                     in.planes, out_view.planes, in.n_planes, in.channels,
                                     ay.n_in, ax.n_in, in.row_stride,
                                     ay.n_out, ax.n_out, out_view.row_stride,
                                     ty.index.data(), ty.weight.data(), ty.count.data(), ty.taps,
                                     tx.index.data(), tx.weight.data(), tx.count.data(), tx.taps,
                                     tx.stencil.begin, tx.stencil.end, tx.stencil.offset,
                                     static_cast<int64_t>(tx.stencil_weight.size()), tx.stencil_weight.data(),
                                     q4 ? qy.data() : nullptr, q4 ? qx.data() : nullptr, q4 ? qs.data() : nullptr};
  if (ax.n_out == 0) return;
  const int64_t per_item = ax.n_in * in.channels * ty.taps + ax.n_out * in.channels * tx.taps;
  const auto& k = cpu::kernels();
  cpu::parallel(in.n_planes * ay.n_out, per_item, [&](int64_t b, int64_t e) { k.separable_apply(args, b, e); });
}

// out = A_y · x · A_xᵀ in the memory format the kernels see x in.
Tensor apply_separable(const Tensor& x, const AxisOperator& ay, const AxisOperator& ax) {
  const ImageView in = image_view(x);
  Tensor out = empty_image(x, in.channels_last, ay.n_out, ax.n_out, x.scalar_type());
  if (out.numel() == 0) return out;
  const ImageView ov = image_view(out, in.channels_last ? 1 : 0);
  if (x.scalar_type() == ScalarType::Double) {
    apply<double>(in, out, ov, ay, ax);
  } else {
    apply<float>(in, out, ov, ay, ax);
  }
  return out;
}

Tensor blur_downsample_cpu(const Tensor& x, std::string mode, double sigma, int64_t kernel_size, std::string border) {
  constexpr const char* op = "vtp_ext.blur_downsample";
  const BlurDownsampleConfig cfg = check_blur_downsample(x, mode, sigma, kernel_size, border, op);
  check_cpu(x, op, "x");
  const bool fpos = x.scalar_type() != ScalarType::Double;
  return apply_separable(x, blur_downsample_axis(x.size(2), cfg, fpos), blur_downsample_axis(x.size(3), cfg, fpos));
}

Tensor blur_downsample_backward_cpu(const Tensor& grad, int64_t height, int64_t width, std::string mode, double sigma,
                                    int64_t kernel_size, std::string border) {
  constexpr const char* op = "vtp_ext.blur_downsample_backward";
  const BlurDownsampleConfig cfg = check_blur_downsample_backward(grad, height, width, mode, sigma, kernel_size, border, op);
  check_cpu(grad, op, "grad");
  const bool fpos = grad.scalar_type() != ScalarType::Double;
  return apply_separable(grad, transpose(blur_downsample_axis(height, cfg, fpos)),
                         transpose(blur_downsample_axis(width, cfg, fpos)));
}

}  // namespace
}  // namespace vtp_ext

STABLE_TORCH_LIBRARY_IMPL(vtp_ext, CPU, m) {
  m.impl("blur_downsample", TORCH_BOX(&vtp_ext::blur_downsample_cpu));
  m.impl("blur_downsample_backward", TORCH_BOX(&vtp_ext::blur_downsample_backward_cpu));
}
