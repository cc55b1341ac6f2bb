// Host-side argument checks, layout and operator tables of blur_downsample, shared by the CPU and
// CUDA glue so both backends accept and reject the same inputs with the same messages.
#pragma once
#include <string>

#include "vtp_ext/separable_operator.h"
#include "vtp_ext/stable_utils.h"

namespace vtp_ext {

constexpr int64_t kMaxPyramidKernelSize = 63;

inline PyramidMode parse_pyramid_mode(const std::string& mode, const char* op) {
  if (mode == "kornia") return PyramidMode::kKornia;
  if (mode == "opencv") return PyramidMode::kOpenCV;
  if (mode == "gauss_avgpool") return PyramidMode::kGaussAvgPool;
  STD_TORCH_CHECK(false, op, ": mode must be \"kornia\", \"opencv\" or \"gauss_avgpool\", got \"", mode, "\"");
  return PyramidMode::kKornia;
}

inline PyramidBorder parse_pyramid_border(const std::string& border, const char* op) {
  if (border == "reflect") return PyramidBorder::kReflect;
  if (border == "zeros") return PyramidBorder::kZeros;
  STD_TORCH_CHECK(false, op, ": border must be \"reflect\" or \"zeros\", got \"", border, "\"");
  return PyramidBorder::kReflect;
}

inline BlurDownsampleConfig check_blur_downsample_config(const std::string& mode, double sigma, int64_t kernel_size,
                                                         const std::string& border, const char* op) {
  BlurDownsampleConfig cfg{parse_pyramid_mode(mode, op), parse_pyramid_border(border, op), sigma, kernel_size};
  STD_TORCH_CHECK(sigma > 0 && std::isfinite(sigma), op, ": sigma must be a positive finite number, got ", sigma);
  STD_TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1 && kernel_size <= kMaxPyramidKernelSize, op,
                  ": kernel_size must be odd and in [1, ", kMaxPyramidKernelSize, "], got ", kernel_size);
  if (cfg.mode != PyramidMode::kGaussAvgPool) {
    STD_TORCH_CHECK(kernel_size == 5, op, ": mode \"", mode,
                    "\" uses the fixed 5-tap binomial filter, so kernel_size must be 5 (got ", kernel_size,
                    "); use mode=\"gauss_avgpool\" for other kernels");
    STD_TORCH_CHECK(cfg.border == PyramidBorder::kReflect, op, ": mode \"", mode,
                    "\" always mirrors at the border like its reference, so border must be \"reflect\", got \"",
                    border, "\"");
  }
  return cfg;
}

// The input sizes each mode's reference accepts (kornia and the reflect-padded seed go through
// F.pad(mode="reflect"), which needs the padding to be smaller than the side).
inline void check_blur_downsample_size(int64_t H, int64_t W, const BlurDownsampleConfig& cfg, const char* op) {
  const char* what = cfg.mode == PyramidMode::kKornia ? "kornia mode (reflect padding of 2)" : "gauss_avgpool";
  if (cfg.mode == PyramidMode::kKornia) {
    STD_TORCH_CHECK(H >= 3 && W >= 3, op, ": ", what, " needs height and width >= 3, got ", H, "x", W);
  } else if (cfg.mode == PyramidMode::kGaussAvgPool) {
    STD_TORCH_CHECK(H >= 2 && W >= 2, op, ": gauss_avgpool (2x2 average pooling) needs height and width >= 2, got ",
                    H, "x", W);
    if (cfg.border == PyramidBorder::kReflect) {
      STD_TORCH_CHECK(cfg.kernel_size / 2 < H && cfg.kernel_size / 2 < W, op,
                      ": gauss_avgpool with border \"reflect\" needs kernel_size // 2 < height and width (as F.pad), "
                      "got kernel_size ", cfg.kernel_size, " for ", H, "x", W);
    }
  } else {
    STD_TORCH_CHECK(H >= 1 && W >= 1, op, ": opencv mode needs a non-empty image, got ", H, "x", W);
  }
}

inline void check_blur_downsample_grad_size(const Tensor& grad, int64_t height, int64_t width,
                                            const BlurDownsampleConfig& cfg, const char* op) {
  const int64_t h = blur_downsample_out_size(height, cfg.mode), w = blur_downsample_out_size(width, cfg.mode);
  STD_TORCH_CHECK(grad.size(2) == h && grad.size(3) == w, op, ": grad must have the output size of a ", height, "x",
                  width, " input, ", h, "x", w, ", got ", grad.size(2), "x", grad.size(3));
}

inline void check_image(const Tensor& x, const char* op, const char* arg, bool allow_uint8);

// The checks of blur_downsample(x, ...) and blur_downsample_backward(grad, height, width, ...).
inline BlurDownsampleConfig check_blur_downsample(const Tensor& x, const std::string& mode, double sigma,
                                                  int64_t kernel_size, const std::string& border, const char* op) {
  check_image(x, op, "x", /*allow_uint8=*/true);
  const BlurDownsampleConfig cfg = check_blur_downsample_config(mode, sigma, kernel_size, border, op);
  check_blur_downsample_size(x.size(2), x.size(3), cfg, op);
  return cfg;
}

inline bool is_image_dtype(ScalarType t) { return is_floating(t) || t == ScalarType::Byte; }

// How the kernels see a [B, C, H, W] tensor: planes of rows of pixels of `channels` contiguous
// elements. NCHW-like (W dense): planes = B*C, channels = 1. channels_last-like (C dense, pixel
// stride C): planes = B, channels = C. Anything else is copied to contiguous first.
struct ImageView {
  Tensor t;
  bool channels_last = false;
  RowIndexer planes;
  int64_t n_planes = 0, channels = 1, row_stride = 0;
};

// A standard-contiguous tensor is always read as NCHW (ambiguous shapes such as H = W = 1 too).
inline bool looks_channels_last(const Tensor& x) {
  const int64_t C = x.size(1), W = x.size(3);
  return !x.is_contiguous() && C > 1 && x.stride(1) == 1 && (W == 1 || x.stride(3) == C);
}

// `layout`: -1 decides from the strides; 0 / 1 forces NCHW / channels_last (for outputs allocated so).
inline ImageView image_view(const Tensor& x, int layout = -1) {
  ImageView v;
  v.t = x;
  if (layout == 1 || (layout == -1 && looks_channels_last(x))) {
    v.channels_last = true;
  } else if (!(x.stride(3) == 1 || x.size(3) == 1)) {
    v.t = torch::stable::contiguous(x);
  }
  const int64_t inner = v.channels_last ? 3 : 2;
  if (!make_row_indexer(v.t, inner, v.planes)) {  // cannot happen for 1-2 plane dims; kept for safety
    v.t = torch::stable::contiguous(x);
    v.channels_last = false;
    make_row_indexer(v.t, 2, v.planes);
  }
  v.channels = v.channels_last ? x.size(1) : 1;
  v.n_planes = v.channels_last ? x.size(0) : x.size(0) * x.size(1);
  v.row_stride = v.t.stride(2);
  return v;
}

// A [B, C, h, w] tensor in the memory format of `like` (channels_last when the kernels see it so).
inline Tensor empty_image(const Tensor& like, bool channels_last, int64_t h, int64_t w, ScalarType dtype) {
  const int64_t sizes[4] = {like.size(0), like.size(1), h, w};
  return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(sizes, 4), dtype, std::nullopt,
                              like.device(), std::nullopt,
                              channels_last ? torch::headeronly::MemoryFormat::ChannelsLast
                                            : torch::headeronly::MemoryFormat::Contiguous);
}

inline void check_image(const Tensor& x, const char* op, const char* arg, bool allow_uint8) {
  check_strided(x, op, arg);
  STD_TORCH_CHECK(x.dim() == 4, op, ": ", arg, " must have shape [B, C, H, W] (4 dimensions), got ", x.dim(),
                  " dimension(s)");
  const ScalarType t = x.scalar_type();
  STD_TORCH_CHECK(allow_uint8 ? is_image_dtype(t) : is_floating(t), op, ": ", arg, " must be ",
                  allow_uint8 ? "float32, float64, float16, bfloat16 or uint8" : "float32, float64, float16 or bfloat16",
                  ", got ", dtype_name(t));
}

// The operator tables in the accumulation type the kernels use (float, or double for float64 data).
template <typename acc_t>
struct AxisTables {
  std::vector<int32_t> index, count;
  std::vector<acc_t> weight;
  int64_t taps = 0, n_out = 0, n_in = 0;
  UniformStencil stencil;
  std::vector<acc_t> stencil_weight;
  explicit AxisTables(const AxisOperator& op)
      : index(op.index), count(op.count), weight(op.weight.begin(), op.weight.end()), taps(op.taps),
        n_out(op.n_out), n_in(op.n_in), stencil(find_uniform_stencil(op)),
        stencil_weight(stencil.weight.begin(), stencil.weight.end()) {}
};

inline BlurDownsampleConfig check_blur_downsample_backward(const Tensor& grad, int64_t height, int64_t width,
                                                           const std::string& mode, double sigma, int64_t kernel_size,
                                                           const std::string& border, const char* op) {
  check_image(grad, op, "grad", /*allow_uint8=*/false);
  const BlurDownsampleConfig cfg = check_blur_downsample_config(mode, sigma, kernel_size, border, op);
  check_blur_downsample_size(height, width, cfg, op);
  check_blur_downsample_grad_size(grad, height, width, cfg, op);
  return cfg;
}

}  // namespace vtp_ext
