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
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const uint16_t* a = table + pairs[2 * i] * width;
    const uint16_t* b = table + pairs[2 * i + 1] * width;
    uint16_t* row = out + i * width;
    for (int64_t c = 0; c < width; c += 16) {
      const __mmask16 lanes = first_lanes(width - c);
      _mm256_mask_storeu_epi16(row + c, lanes, gelu_of_sum_bf16(a + c, b + c, lanes));
    }
  }
}

}  // namespace sepfl
