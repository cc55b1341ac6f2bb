// Test-only operator library: every vtp_ext schema again, under the namespace vtp_ext_cucpu, whose
// CPU kernels are the *CUDA* kernels and glue (csrc/cuda/*.cu) compiled as C++ against the
// CUDA-on-CPU runtime (../shared/cuda-cpu). python_tests compare them with the real CPU ops.
#include "vtp_ext/schemas.h"

STABLE_TORCH_LIBRARY(vtp_ext_cucpu, m) { vtp_ext::define_schemas(m); }
