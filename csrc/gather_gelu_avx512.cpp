// The bfloat16 gather of the node embeddings' first hidden activations with their GELU
// (gather_gelu_cpu in ops_cpu.h), written out for AVX-512 with BF16.
//
// This file is compiled with AVX-512 and BF16 flags (CMakeLists.txt): nothing in it
// may run before gather_gelu_ready() (bf16_dispatch_cpu.cpp) has found them.
#include <immintrin.h>

#include <cstdint>

#include "bf16_avx512.h"
#include "ops_cpu.h"

namespace sepfl {

void gather_gelu_avx512(const uint16_t* table, int64_t width, const int64_t* pairs,
                        int64_t rows, uint16_t* out) {
  const __mmask16 tail = static_cast<__mmask16>((1u << (width % 16)) - 1);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const uint16_t* a = table + pairs[2 * i] * width;
    const uint16_t* b = table + pairs[2 * i + 1] * width;
    uint16_t* row = out + i * width;
    for (int64_t c = 0; c < width; c += 16) {
      const __mmask16 lanes = width - c >= 16 ? 0xFFFF : tail;
      const __m512 sum = _mm512_add_ps(load_bf16(a + c, lanes), load_bf16(b + c, lanes));
      _mm256_mask_storeu_epi16(row + c, lanes, (__m256i)_mm512_cvtneps_pbh(gelu_avx512(sum)));
    }
  }
}

}  // namespace sepfl
