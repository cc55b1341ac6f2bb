// CPU glue of blur_downsample (forward and backward): checks, operator tables (cached per size),
// threading. Both directions apply a separable operator with the same kernel
// (cpu/separable_kernels.h); the backward applies the transposed tables.
#include <algorithm>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

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

// The widest run of outputs [begin, end), both even, around the middle where output 2m + ph reads
// inputs m + offset[ph] + e with fixed weights[ph] (e < len[ph]): an upsampling operator such as
// the backward of a stride-2 stencil is two uniform stencils, one per output phase. Empty (begin ==
// end) where the operator has no such run (the forward, fractional positions).
struct Polyphase {
  int64_t begin = 0, end = 0, offset[2] = {0, 0};
  std::vector<double> weight[2];
};

inline Polyphase find_polyphase(const AxisOperator& op) {
  Polyphase pp;
  const int64_t m0 = op.n_out / 4;  // the pair (2 m0, 2 m0 + 1) sits mid-axis
  if (op.n_out < 4 || op.n_in == 0) return pp;
  for (int ph = 0; ph < 2; ++ph) {
    const int64_t j = 2 * (op.n_out / 4) + ph, c = op.count[j];
    if (c == 0) return pp;
    const int32_t* ix = op.index.data() + j * op.taps;
    for (int64_t e = 1; e < c; ++e)
      if (ix[e] != ix[0] + e) return pp;
    pp.offset[ph] = ix[0] - m0;
    pp.weight[ph].assign(op.weight.begin() + j * op.taps, op.weight.begin() + j * op.taps + c);
  }
  auto matches = [&](int64_t m) {
    for (int ph = 0; ph < 2; ++ph) {
      const int64_t j = 2 * m + ph, c = static_cast<int64_t>(pp.weight[ph].size());
      if (j >= op.n_out || op.count[j] != c) return false;
      for (int64_t e = 0; e < c; ++e)
        if (op.index[j * op.taps + e] != m + pp.offset[ph] + e || op.weight[j * op.taps + e] != pp.weight[ph][e])
          return false;
    }
    return true;
  };
  int64_t mb = m0, me = m0 + 1;
  while (mb > 0 && matches(mb - 1)) --mb;
  while (matches(me)) ++me;
  pp.begin = 2 * mb;
  pp.end = 2 * me;
  return pp;
}

// One axis as the kernel reads it: the tables in the accumulation type, and the uint8 integer
// weights where they exist (empty otherwise).
template <typename acc_t>
struct AxisPlan {
  AxisTables<acc_t> t;
  std::vector<uint16_t> q4, stencil_q4;
  // Either fast path covers the run of outputs it finds; the other is left empty. (Any operator
  // has a one-output "stride-2 stencil" mid-axis and a one-pair polyphase one, so compare widths.)
  Polyphase poly;
  std::vector<acc_t> poly_weight[2];
  explicit AxisPlan(const AxisOperator& op) : t(op), q4(q4_weights(op.weight, op.count, op.taps)) {
    poly = find_polyphase(op);
    if (poly.end - poly.begin > t.stencil.end - t.stencil.begin) {
      t.stencil.begin = t.stencil.end = 0;
    } else {
      poly = Polyphase{};
    }
    for (int ph = 0; ph < 2; ++ph) poly_weight[ph].assign(poly.weight[ph].begin(), poly.weight[ph].end());
    const std::vector<int32_t> count{static_cast<int32_t>(t.stencil.weight.size())};
    stencil_q4 = q4_weights(t.stencil.weight, count, static_cast<int64_t>(t.stencil.weight.size()));
    if (stencil_q4.empty() && !t.stencil.weight.empty()) q4.clear();
  }
};

struct AxisKey {
  int64_t n, kernel_size;
  double sigma;
  PyramidMode mode;
  PyramidBorder border;
  bool backward;
  bool operator==(const AxisKey& o) const {
    return n == o.n && kernel_size == o.kernel_size && sigma == o.sigma && mode == o.mode && border == o.border &&
           backward == o.backward;
  }
};

// The plans of recently used sizes: a pyramid, a data loader or a training loop calls with the same
// few sizes over and over, and building a 1024-pixel axis costs tens of microseconds -- as much as
// the kernel itself on a small image. Plans are immutable and shared, so a caller keeps its plan
// alive while another thread evicts it.
template <typename acc_t>
std::shared_ptr<const AxisPlan<acc_t>> axis_plan(const AxisKey& key) {
  static std::mutex mutex;
  static std::vector<std::pair<AxisKey, std::shared_ptr<const AxisPlan<acc_t>>>> cache;  // most recent last
  constexpr size_t kCapacity = 16;
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t e = 0; e < cache.size(); ++e) {
      if (cache[e].first == key) {
        std::rotate(cache.begin() + e, cache.begin() + e + 1, cache.end());
        return cache.back().second;
      }
    }
  }
  // float positions for non-float64 data, as PyTorch's upsample kernel (acc_t is double only for float64)
  const BlurDownsampleConfig cfg{key.mode, key.border, key.sigma, key.kernel_size};
  const AxisOperator fwd = blur_downsample_axis(key.n, cfg, !std::is_same_v<acc_t, double>);
  auto plan = std::make_shared<const AxisPlan<acc_t>>(key.backward ? transpose(fwd) : fwd);
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() == kCapacity) cache.erase(cache.begin());
  cache.emplace_back(key, plan);
  return plan;
}

template <typename acc_t>
void apply(const ImageView& in, Tensor& out, const ImageView& out_view, const AxisPlan<acc_t>& py,
           const AxisPlan<acc_t>& px) {
  const AxisTables<acc_t>&ty = py.t, &tx = px.t;
  const bool q4 = in.t.scalar_type() == ScalarType::Byte && !py.q4.empty() && !px.q4.empty();
  const cpu::SeparableApplyArgs args{in.t.const_data_ptr(), out.mutable_data_ptr(), kernel_dtype(in.t.scalar_type()),
                                     in.planes, out_view.planes, in.n_planes, in.channels,
                                     ty.n_in, tx.n_in, in.row_stride,
                                     ty.n_out, tx.n_out, out_view.row_stride,
                                     ty.index.data(), ty.weight.data(), ty.count.data(), ty.taps,
                                     tx.index.data(), tx.weight.data(), tx.count.data(), tx.taps,
                                     tx.stencil.begin, tx.stencil.end, tx.stencil.offset,
                                     static_cast<int64_t>(tx.stencil_weight.size()), tx.stencil_weight.data(),
                                     q4 ? py.q4.data() : nullptr, q4 ? px.q4.data() : nullptr,
                                     q4 ? px.stencil_q4.data() : nullptr,
                                     px.poly.begin, px.poly.end, {px.poly.offset[0], px.poly.offset[1]},
                                     {static_cast<int64_t>(px.poly_weight[0].size()),
                                      static_cast<int64_t>(px.poly_weight[1].size())},
                                     {px.poly_weight[0].data(), px.poly_weight[1].data()}};
  if (tx.n_out == 0) return;
  const int64_t per_item = tx.n_in * in.channels * ty.taps + tx.n_out * in.channels * tx.taps;
  const auto& k = cpu::kernels();
  // A call under ~256K units (~20 us on one core) stays on the calling thread: waking a second one
  // costs a good part of that. One 336x336 RGB image (~1.3M units) is split: measured on the idle
  // 2-core machine, fp32 NCHW 108 -> 45 us (cv2.pyrDown: 43 us) and uint8 72 -> 41 us (cv2: 45 us).
  // The cost: on a machine whose other cores are busy, the second thread may wait for a scheduler
  // time slice, as any parallel torch op does.
  constexpr int64_t kSerialWork = int64_t{1} << 18;
  const int64_t items = in.n_planes * ty.n_out;
  if (items * per_item < kSerialWork) {
    k.separable_apply(args, 0, items);
    return;
  }
  cpu::parallel(items, per_item, [&](int64_t b, int64_t e) { k.separable_apply(args, b, e); });
}

template <typename acc_t>
void apply_planned(const ImageView& in, Tensor& out, const ImageView& ov, const BlurDownsampleConfig& cfg, int64_t h,
                   int64_t w, bool backward) {
  const auto py = axis_plan<acc_t>({h, cfg.kernel_size, cfg.sigma, cfg.mode, cfg.border, backward});
  const auto px = axis_plan<acc_t>({w, cfg.kernel_size, cfg.sigma, cfg.mode, cfg.border, backward});
  apply<acc_t>(in, out, ov, *py, *px);
}

// out = A_y · x · A_xᵀ (or the transposes, backward) in the memory format the kernels see x in; h, w
// are the forward input's sizes.
Tensor apply_separable(const Tensor& x, const BlurDownsampleConfig& cfg, int64_t h, int64_t w, bool backward) {
  const ImageView in = image_view(x);
  const int64_t oh = backward ? h : blur_downsample_out_size(h, cfg.mode);
  const int64_t ow = backward ? w : blur_downsample_out_size(w, cfg.mode);
  Tensor out = empty_image(x, in.channels_last, oh, ow, x.scalar_type());
  if (out.numel() == 0) return out;
  const ImageView ov = image_view(out, in.channels_last ? 1 : 0);
  if (x.scalar_type() == ScalarType::Double) {
    apply_planned<double>(in, out, ov, cfg, h, w, backward);
  } else {
    apply_planned<float>(in, out, ov, cfg, h, w, backward);
  }
  return out;
}

Tensor blur_downsample_cpu(const Tensor& x, std::string mode, double sigma, int64_t kernel_size, std::string border) {
  constexpr const char* op = "vtp_ext.blur_downsample";
  const BlurDownsampleConfig cfg = check_blur_downsample(x, mode, sigma, kernel_size, border, op);
  check_cpu(x, op, "x");
  return apply_separable(x, cfg, x.size(2), x.size(3), /*backward=*/false);
}

Tensor blur_downsample_backward_cpu(const Tensor& grad, int64_t height, int64_t width, std::string mode, double sigma,
                                    int64_t kernel_size, std::string border) {
  constexpr const char* op = "vtp_ext.blur_downsample_backward";
  const BlurDownsampleConfig cfg = check_blur_downsample_backward(grad, height, width, mode, sigma, kernel_size, border, op);
  check_cpu(grad, op, "grad");
  return apply_separable(grad, cfg, height, width, /*backward=*/true);
}

}  // namespace
}  // namespace vtp_ext

STABLE_TORCH_LIBRARY_IMPL(vtp_ext, CPU, m) {
  m.impl("blur_downsample", TORCH_BOX(&vtp_ext::blur_downsample_cpu));
  m.impl("blur_downsample_backward", TORCH_BOX(&vtp_ext::blur_downsample_backward_cpu));
}
