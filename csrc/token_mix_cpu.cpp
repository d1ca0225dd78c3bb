// Dispatch of the token-mixing kernel (token_mix_cpu in ops_cpu.h): the AMX kernel of
// token_mix_amx.cpp where this build has it, the CPU lists AMX-BF16 and AVX-512 BF16, and
// Linux grants this process the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM). Compiled
// for any x86-64: nothing here may use an instruction the CPU might lack.
#include <stdexcept>

#include "ops_cpu.h"

#if defined(SEPFL_HAVE_AMX)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sepfl {

#if defined(SEPFL_HAVE_AMX)
void token_mix_amx(uint16_t* tokens, int64_t k, int64_t cols, int64_t width,
                   const uint16_t* w_in, const uint16_t* w_out, const float* scale);

namespace {

bool amx_granted() {
  constexpr long kRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
  constexpr long kTileData = 18;               // XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
}

}  // namespace
#endif

bool token_mix_ready() {
#if defined(SEPFL_HAVE_AMX)
  static const bool ready = __builtin_cpu_supports("amx-tile") &&
                            __builtin_cpu_supports("amx-bf16") &&
                            __builtin_cpu_supports("avx512bf16") &&
                            __builtin_cpu_supports("avx512bw") && amx_granted();
  return ready;
#else
  return false;
#endif
}

void token_mix_cpu(uint16_t* tokens, int64_t k, int64_t cols, int64_t width,
                   const uint16_t* w_in, const uint16_t* w_out, const float* scale) {
#if defined(SEPFL_HAVE_AMX)
  if (token_mix_ready()) {
    token_mix_amx(tokens, k, cols, width, w_in, w_out, scale);
    return;
  }
#endif
  throw std::runtime_error("token_mix needs AMX-BF16 (see token_mix_ready())");
}

}  // namespace sepfl
