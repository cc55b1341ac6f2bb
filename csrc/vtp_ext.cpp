// The operator library: schemas only. Backends register their kernels in their own files
// (csrc/cpu/*_op.cpp: CPU, csrc/cuda/*.cu: CUDA); fakes and autograd live in vtp_ext/ops/*.py.
#include "vtp_ext/schemas.h"

STABLE_TORCH_LIBRARY(vtp_ext, m) { vtp_ext::define_schemas(m); }
