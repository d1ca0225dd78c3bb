// Run-time dispatch of the bfloat16 kernels written out for the CPU's matrix and vector
// units (ops_cpu.h): the AMX token mix, channel mix and attention scores of
// token_mix_amx.cpp, channel_mix_amx.cpp and attention_amx.cpp, and the AVX-512 gather with its GELU of gather_gelu_avx512.cpp, each
// where this build has it (a compiler with their intrinsics) and the CPU has what it needs;
// the AMX ones also need Linux to grant this process the tile state (arch_prctl ARCH_REQ_XCOMP_PERM). Compiled for any x86-64:
// nothing here may use an instruction the CPU might lack.
#include <stdexcept>

#include "ops_cpu.h"

#if defined(SEPFL_HAVE_BF16_KERNELS)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sepfl {

#if defined(SEPFL_HAVE_BF16_KERNELS)
void token_mix_amx(uint16_t* tokens, int64_t k, int64_t cols, int64_t width,
                   const uint16_t* w_in, const uint16_t* w_out, const float* scale);
void gather_gelu_avx512(const uint16_t* table, int64_t width, const int64_t* pairs,
                        int64_t rows, uint16_t* out);
void attention_scores_amx(const uint16_t* x, int64_t rows, int64_t width,
                          const uint16_t* weights, int64_t out, const float* bias,
                          const float* out_w, float* scores);
void channel_mix_amx(const uint16_t* tokens, int64_t width, const uint16_t* hidden,
                     int64_t depth, const int64_t* pairs, int64_t rows, const uint16_t* weights,
                     uint16_t* out);

namespace {

bool amx_granted() {
  constexpr long kRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
  constexpr long kTileData = 18;               // XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
}

}  // namespace
#endif

bool gather_gelu_ready() {
#if defined(SEPFL_HAVE_BF16_KERNELS)
  static const bool ready = __builtin_cpu_supports("avx512f") &&
                            __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512bf16");
  return ready;
#else
  return false;
#endif
}

bool amx_ready() {
#if defined(SEPFL_HAVE_BF16_KERNELS)
  static const bool ready = gather_gelu_ready() && __builtin_cpu_supports("amx-tile") &&
                            __builtin_cpu_supports("amx-bf16") && amx_granted();
  return ready;
#else
  return false;
#endif
}

void token_mix_cpu(uint16_t* tokens, int64_t k, int64_t cols, int64_t width,
                   const uint16_t* w_in, const uint16_t* w_out, const float* scale) {
#if defined(SEPFL_HAVE_BF16_KERNELS)
  if (amx_ready()) {
    token_mix_amx(tokens, k, cols, width, w_in, w_out, scale);
    return;
  }
#endif
  throw std::runtime_error("token_mix needs AMX-BF16 (see amx_ready())");
}

void gather_gelu_cpu(const uint16_t* table, int64_t width, const int64_t* pairs, int64_t rows,
                     uint16_t* out) {
#if defined(SEPFL_HAVE_BF16_KERNELS)
  if (gather_gelu_ready()) {
    gather_gelu_avx512(table, width, pairs, rows, out);
    return;
  }
#endif
  throw std::runtime_error("gather_gelu needs AVX-512 BF16 (see gather_gelu_ready())");
}

void channel_mix_cpu(const uint16_t* tokens, int64_t width, const uint16_t* hidden,
                     int64_t depth, const int64_t* pairs, int64_t rows, const uint16_t* weights,
                     uint16_t* out) {
#if defined(SEPFL_HAVE_BF16_KERNELS)
  if (amx_ready()) {
    channel_mix_amx(tokens, width, hidden, depth, pairs, rows, weights, out);
    return;
  }
#endif
  throw std::runtime_error("channel_mix needs AMX-BF16 (see amx_ready())");
}

void attention_scores_cpu(const uint16_t* x, int64_t rows, int64_t width,
                          const uint16_t* weights, int64_t out, const float* bias,
                          const float* out_w, float* scores) {
#if defined(SEPFL_HAVE_BF16_KERNELS)
  if (amx_ready()) {
    attention_scores_amx(x, rows, width, weights, out, bias, out_w, scores);
    return;
  }
#endif
  throw std::runtime_error("attention_scores needs AMX-BF16 (see amx_ready())");
}

}  // namespace sepfl
