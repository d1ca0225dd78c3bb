// The token-mixing step of the node embeddings on AMX tiles (token_mix_cpu in ops_cpu.h).
//
// This file is compiled with -mamx-tile -mamx-bf16 and AVX-512 (CMakeLists.txt):
// nothing in it may run before amx_ready() (bf16_dispatch_cpu.cpp) has found AMX-BF16
// and the OS's leave to use its tiles.
//
// Per block of 16 columns (one node's channels, or the tail of the last node's):
//   1. the block's k + 1 token rows are packed as bfloat16 row pairs (the VNNI layout
//      of an AMX B operand), zero-padded to token_mix_depth(k + 1) rows;
//   2. hidden = w_in @ tokens, 16 output rows per tile, each tile's float32 result
//      through the exact-form GELU and packed the same way as the B operand of
//   3. mix = w_out @ [hidden; 1], then tokens[r, c] += scale[c % width] * mix[r, c],
//      rounded to bfloat16 once.
// Every product accumulates in float32; the hidden activations are rounded to bfloat16
// once, as the B operand must be.
#include <immintrin.h>

#include <cstdint>

#include "amx_tiles.h"
#include "bf16_avx512.h"
#include "ops_cpu.h"

namespace sepfl {

namespace {

// Rows a and b (16 floats each) as 32 bfloat16 values a0 b0 a1 b1 ...: one row pair of a
// B operand.
inline __m512i row_pair(__m512 a, __m512 b) {
  const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // a in the low half
  const __m512i interleave = _mm512_set_epi16(
      31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
      23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, both);
}

// One or two row tiles (`tiles`) of one block's product: 16 or 32 rows of `w` (row stride
// `depth`) times the packed B operand `b` of `depth` rows, into c[0 .. 256 * tiles). Results
// in tiles 0 and 1, the weights' A operands in 2 and 3, the packed activations in 4.
inline void products(const uint16_t* w, int64_t depth, int tiles, const uint16_t* b,
                     float* c) {
  _tile_zero(0);
  _tile_zero(1);
  for (int64_t kc = 0; kc < depth; kc += kDepth) {
    _tile_loadd(4, b + kc * kTile, 64);
    _tile_loadd(2, w + kc, depth * 2);
    _tile_dpbf16ps(0, 2, 4);
    if (tiles == 2) {
      _tile_loadd(3, w + kTile * depth + kc, depth * 2);
      _tile_dpbf16ps(1, 3, 4);
    }
  }
  _tile_stored(0, c, 64);
  if (tiles == 2) _tile_stored(1, c + kTile * kTile, 64);
}

}  // namespace

void token_mix_amx(uint16_t* tokens, int64_t k, int64_t cols, int64_t width,
                   const uint16_t* w_in, const uint16_t* w_out, const float* scale) {
  const int64_t hidden = 2 * k;
  const int64_t in_depth = token_mix_depth(k + 1), out_depth = token_mix_depth(hidden + 1);
  const int64_t in_rows = token_mix_rows(hidden), out_rows = token_mix_rows(k);
  const int64_t blocks = (cols + kTile - 1) / kTile;
#pragma omp parallel
  {
    load_tile_config();
    // packed B operands (row pairs of 16 columns) and one or two float32 result tiles
    AlignedBuffer<uint16_t> in(in_depth * kTile), mixed(out_depth * kTile);
    AlignedBuffer<float> c(2 * kTile * kTile);
    const __m512 ones = _mm512_set1_ps(1.f), zeros = _mm512_setzero_ps();
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t c0 = block * kTile;
      const __mmask16 lanes = cols - c0 >= kTile ? 0xFFFF : (__mmask16)((1u << (cols - c0)) - 1);
      for (int64_t r = 0; r < in_depth; r += 2) {
        const __m512 a = r <= k ? load_bf16(tokens + r * cols + c0, lanes) : zeros;
        const __m512 b = r + 1 <= k ? load_bf16(tokens + (r + 1) * cols + c0, lanes) : zeros;
        _mm512_storeu_si512(in.data() + r * kTile, row_pair(a, b));
      }
      for (int64_t m = 0; m < in_rows; m += 2 * kTile) {
        const int tiles = in_rows - m > kTile ? 2 : 1;
        products(w_in + m * in_depth, in_depth, tiles, in.data(), c.data());
        for (int64_t i = 0; i < tiles * kTile; i += 2) {
          const __m512 a = gelu_avx512(_mm512_loadu_ps(c.data() + i * kTile));
          const __m512 b = gelu_avx512(_mm512_loadu_ps(c.data() + (i + 1) * kTile));
          _mm512_storeu_si512(mixed.data() + (m + i) * kTile, row_pair(a, b));
        }
      }
      // row `hidden` is the bias row of ones (w_out's column 2k), every row after it zero
      for (int64_t r = hidden; r < out_depth; r += 2) {
        _mm512_storeu_si512(mixed.data() + r * kTile, row_pair(r == hidden ? ones : zeros, zeros));
      }
      float lane_scale[kTile] = {};
      for (int64_t j = 0; j < kTile && c0 + j < cols; ++j) lane_scale[j] = scale[(c0 + j) % width];
      const __m512 gain = _mm512_loadu_ps(lane_scale);
      for (int64_t m = 0; m < out_rows; m += 2 * kTile) {
        const int tiles = out_rows - m > kTile ? 2 : 1;
        products(w_out + m * out_depth, out_depth, tiles, mixed.data(), c.data());
        for (int64_t i = 0; i < tiles * kTile && m + i < k; ++i) {
          uint16_t* row = tokens + (m + i) * cols + c0;
          const __m512 sum = _mm512_fmadd_ps(gain, _mm512_loadu_ps(c.data() + i * kTile),
                                             load_bf16(row, lanes));
          _mm256_mask_storeu_epi16(row, lanes, (__m256i)_mm512_cvtneps_pbh(sum));
        }
      }
    }
    _tile_release();
  }
}

}  // namespace sepfl
