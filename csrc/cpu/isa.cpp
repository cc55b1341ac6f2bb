#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace vtp_ext::cpu {

static const KernelTable& pick() {
  __builtin_cpu_init();
  const char* want = std::getenv("VTP_EXT_CPU_ISA");
  const bool force_base = want != nullptr && std::strcmp(want, "base") == 0;
#ifdef VTP_ISA_HAVE_avx2
  if (!force_base && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return avx2::table();
  }
#endif
  (void)force_base;
  return base::table();
}

const KernelTable& kernels() {
  static const KernelTable& t = pick();
  return t;
}

const char* active_isa_name() { return kernels().isa; }

}  // namespace vtp_ext::cpu
