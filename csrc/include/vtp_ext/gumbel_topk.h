// Host-side argument checks of gumbel_topk, its backward and gumbel_noise, shared by the CPU and
// CUDA glue so both backends reject the same inputs with the same messages. k is read on the host
// (a device tensor costs one small synchronising copy) and clamped to [0, N] for the kernels.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "vtp_ext/gumbel_math.h"
#include "vtp_ext/segmented_topk.h"
#include "vtp_ext/stable_utils.h"

namespace vtp_ext {

inline GumbelMode parse_gumbel_mode(const std::string& mode, const char* op) {
  if (mode == "sequential") return GumbelMode::kSequential;
  if (mode == "single") return GumbelMode::kSingle;
  STD_TORCH_CHECK(false, op, ": mode must be \"sequential\" or \"single\", got \"", mode, "\"");
  return GumbelMode::kSequential;
}

inline std::string non_finite_logits_message(const char* op) {
  return std::string(op) + ": logits must not contain NaN or +inf (-inf is allowed: never picked while finite "
                           "entries remain)";
}

inline void check_gumbel_logits(const Tensor& logits, const char* op) {
  check_strided(logits, op, "logits");
  STD_TORCH_CHECK(logits.dim() == 2, op, ": logits must have shape [B, N] (2 dimensions), got ", logits.dim(),
                  " dimension(s)");
  check_floating(logits, op, "logits");
  STD_TORCH_CHECK(logits.size(1) <= INT32_MAX, op, ": logits must have at most 2^31-1 columns, got ",
                  logits.size(1));
}

// Validates everything but the logits' values; returns k on the host, contiguous, clamped to [0, N].
inline Tensor check_gumbel_topk(const Tensor& logits, const Tensor& k, double tau, const std::string& mode,
                                const char* op, GumbelMode* parsed_mode) {
  check_gumbel_logits(logits, op);
  *parsed_mode = parse_gumbel_mode(mode, op);
  STD_TORCH_CHECK(tau > 0.0 && std::isfinite(tau), op, ": tau must be a positive finite number, got ", tau);
  check_strided(k, op, "k");
  STD_TORCH_CHECK(k.scalar_type() == ScalarType::Long, op, ": k must be int64, got ", dtype_name(k.scalar_type()));
  const int64_t B = logits.size(0), N = logits.size(1);
  STD_TORCH_CHECK(k.dim() == 1 && k.size(0) == B, op, ": k must have shape [B] = [", B, "], got ", shape_str(k));
  check_index_tensor_device(k, logits, op, "k", "logits");
  const Tensor src = host_contiguous(k);
  Tensor clamped = host_empty_long(B);
  const int64_t* in = src.const_data_ptr<int64_t>();
  int64_t* out = clamped.mutable_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    STD_TORCH_CHECK(in[b] >= 0, op, ": k must be >= 0, got k[", b, "] = ", in[b]);
    out[b] = in[b] < N ? in[b] : N;
  }
  return clamped;
}

inline void check_gumbel_grad(const Tensor& grad, const Tensor& logits, const char* op) {
  check_strided(grad, op, "grad");
  check_same_device(logits, grad, op, "logits", "grad");
  check_same_dtype(logits, grad, op, "logits", "grad");
  check_same_shape(logits, grad, op, "logits", "grad");
}

inline void check_gumbel_step(int64_t step, const char* op) {
  STD_TORCH_CHECK(step >= 0 && step <= int64_t(UINT32_MAX), op, ": step must be in [0, 2^32-1], got ", step);
}

// Accumulation (and noise) dtype: float64 for float64 logits, float32 otherwise.
inline ScalarType gumbel_acc_type(const Tensor& logits) {
  return logits.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// The preamble both backends' gumbel_topk and gumbel_topk_backward share: every check (the backend's
// device check is passed in, as it differs), k on the host clamped to [0, N], and the output
// ([B, N], dtype of logits, contiguous), so the two backends cannot drift apart in what they accept.
struct GumbelCall {
  Tensor k_host;
  GumbelMode mode = GumbelMode::kSequential;
  int64_t B = 0, N = 0;
  Tensor out;
};

template <typename CheckDevice>
GumbelCall prepare_gumbel_topk(const Tensor* grad, const Tensor& logits, const Tensor& k, double tau,
                               const std::string& mode, const char* op, const CheckDevice& check_device) {
  GumbelCall c;
  c.k_host = check_gumbel_topk(logits, k, tau, mode, op, &c.mode);
  if (grad != nullptr) check_gumbel_grad(*grad, logits, op);
  check_device(logits, op, "logits");
  c.B = logits.size(0);
  c.N = logits.size(1);
  c.out = torch::stable::new_empty(logits, logits.sizes());
  return c;
}

// gumbel_noise's preamble: checks and the noise tensor ([B, N] in the accumulation dtype).
template <typename CheckDevice>
Tensor prepare_gumbel_noise(const Tensor& logits, int64_t step, const char* op, const CheckDevice& check_device) {
  check_gumbel_logits(logits, op);
  check_gumbel_step(step, op);
  check_device(logits, op, "logits");
  return torch::stable::new_empty(logits, logits.sizes(), gumbel_acc_type(logits));
}

// philox4x32_10: counter [n, 4] and key [n, 2], int64 holding 32-bit unsigned words. Validated on the
// host (a device tensor is copied there); the host copies are kept for philox_on_host.
struct PhiloxInputs {
  Tensor counter, key;
};

inline PhiloxInputs check_philox_inputs(const Tensor& counter, const Tensor& key, const char* op) {
  check_strided(counter, op, "counter");
  check_strided(key, op, "key");
  STD_TORCH_CHECK(counter.scalar_type() == ScalarType::Long, op, ": counter must be int64, got ",
                  dtype_name(counter.scalar_type()));
  STD_TORCH_CHECK(key.scalar_type() == ScalarType::Long, op, ": key must be int64, got ",
                  dtype_name(key.scalar_type()));
  STD_TORCH_CHECK(counter.dim() == 2 && counter.size(1) == 4, op, ": counter must have shape [n, 4], got ",
                  shape_str(counter));
  STD_TORCH_CHECK(key.dim() == 2 && key.size(0) == counter.size(0) && key.size(1) == 2, op,
                  ": key must have shape [n, 2] = [", counter.size(0), ", 2], got ", shape_str(key));
  check_same_device(counter, key, op, "counter", "key");
  PhiloxInputs in{host_contiguous(counter), host_contiguous(key)};
  for (const Tensor* t : {&in.counter, &in.key}) {
    const int64_t* p = t->const_data_ptr<int64_t>();
    for (int64_t i = 0; i < t->numel(); ++i)
      STD_TORCH_CHECK(p[i] >= 0 && p[i] <= int64_t(UINT32_MAX), op, ": ", t == &in.counter ? "counter" : "key",
                      " words must be in [0, 2^32-1], got ", p[i]);
  }
  return in;
}

inline void philox_on_host(const PhiloxInputs& in, int64_t* out) {
  const int64_t* c = in.counter.const_data_ptr<int64_t>();
  const int64_t* k = in.key.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < in.counter.size(0); ++i) {
    const Philox4x32 r = philox4x32_10(uint32_t(c[4 * i]), uint32_t(c[4 * i + 1]), uint32_t(c[4 * i + 2]),
                                       uint32_t(c[4 * i + 3]), uint32_t(k[2 * i]), uint32_t(k[2 * i + 1]));
    for (int w = 0; w < 4; ++w) out[4 * i + w] = int64_t(r.v[w]);
  }
}

}  // namespace vtp_ext
