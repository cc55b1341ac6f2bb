#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace vtp_ext::cpu {

// Best first. An ISA the environment variable names is taken when this CPU supports it; otherwise (or
// without the variable) the best supported one is.
static const KernelTable& pick() {
  __builtin_cpu_init();
  const char* want = std::getenv("VTP_EXT_CPU_ISA");
  struct Candidate {
    const KernelTable* (*table)();
    bool supported;
  };
  const Candidate candidates[] = {
#ifdef VTP_ISA_HAVE_avx512
      {[] { return &avx512::table(); },
       __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")},
#endif
#ifdef VTP_ISA_HAVE_avx2
      {[] { return &avx2::table(); },
       __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")},
#endif
      {[] { return &base::table(); }, true},
  };
  const KernelTable* best = nullptr;
  for (const Candidate& c : candidates) {
    if (!c.supported) continue;
    const KernelTable* t = c.table();
    if (best == nullptr) best = t;
    if (want != nullptr && std::strcmp(want, t->isa) == 0) return *t;
  }
  return *best;
}

const KernelTable& kernels() {
  static const KernelTable& t = pick();
  return t;
}

const char* active_isa_name() { return kernels().isa; }

}  // namespace vtp_ext::cpu
