// Host-side argument checks and geometry of token_saliency, shared by the CPU and CUDA glue so both
// backends reject the same inputs with the same messages.
#pragma once
#include <string>

#include "vtp_ext/saliency_math.h"
#include "vtp_ext/stable_utils.h"

namespace vtp_ext {

inline SaliencyMethod parse_saliency_method(const std::string& method, const char* op) {
  if (method == "variance") return SaliencyMethod::kVariance;
  if (method == "l2norm") return SaliencyMethod::kL2Norm;
  STD_TORCH_CHECK(false, op, ": method must be \"variance\" or \"l2norm\", got \"", method, "\"");
  return SaliencyMethod::kVariance;
}

inline void check_saliency_correction(int64_t correction, const char* op) {
  STD_TORCH_CHECK(correction == 0 || correction == 1, op, ": correction must be 0 or 1, got ",
                  correction);
}

inline void check_token_saliency_x(const Tensor& x, const char* op) {
  check_strided(x, op, "x");
  STD_TORCH_CHECK(x.dim() >= 2, op, ": x must have shape [..., N, D] (at least 2 dimensions), got ",
                  x.dim(), " dimension(s)");
  check_floating(x, op, "x");
}

inline SaliencyMethod check_token_saliency(const Tensor& x, const std::string& method,
                                           int64_t correction, const char* op) {
  check_token_saliency_x(x, op);
  const SaliencyMethod m = parse_saliency_method(method, op);
  check_saliency_correction(correction, op);
  return m;
}

inline SaliencyMethod check_token_saliency_backward(const Tensor& grad, const Tensor& x,
                                                    const Tensor& out, const std::string& method,
                                                    int64_t correction, const char* op) {
  const SaliencyMethod m = check_token_saliency(x, method, correction, op);
  check_strided(grad, op, "grad");
  check_strided(out, op, "out");
  check_same_device(x, grad, op, "x", "grad");
  check_same_device(x, out, op, "x", "out");
  check_same_dtype(x, grad, op, "x", "grad");
  check_same_dtype(x, out, op, "x", "out");
  bool leading = grad.dim() == x.dim() - 1;
  for (int64_t d = 0; leading && d < grad.dim(); ++d) leading = grad.size(d) == x.size(d);
  STD_TORCH_CHECK(leading, op, ": grad must have shape x.shape[:-1] = ", shape_str(x), "[:-1], got ",
                  shape_str(grad));
  check_same_shape(grad, out, op, "grad", "out");
  return m;
}

}  // namespace vtp_ext
