// The token-mixing step of the node embeddings on AMX tiles (token_mix_cpu in ops_cpu.h).
//
// This file is compiled with -mamx-tile -mamx-bf16 and AVX-512 (CMakeLists.txt):
// nothing in it may run before amx_ready() (bf16_dispatch_cpu.cpp) has found AMX-BF16
// and the OS's leave to use its tiles.
//
// Per block of 32 columns (two column tiles; a block may span two nodes' channels):
//   1. the block's k + 1 token rows are packed as bfloat16 row pairs (the VNNI layout
//      of an AMX B operand), zero-padded to token_mix_depth(k + 1) rows;
//   2. hidden = w_in @ tokens, 32 rows at a time (2 x 2 result tiles), each float32 result
//      through the exact-form GELU and packed the same way as the B operand of
//   3. mix = w_out @ [hidden; 1], 32 rows at a time, then tokens[r, c] += scale[c % width] *
//      mix[r, c], rounded to bfloat16 once.
// The AVX-512 work on a result (GELU and packing, or the residual) is done a few rows at a
// time between the AMX products of the next 32 rows, so that the two units overlap. Every
// product accumulates in float32; the hidden activations are rounded to bfloat16 once, as
// the B operand must be.
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

// Row pair p (rows 2p, 2p + 1) of column tile t in packed B operands of `chunks` chunks per
// column tile.
inline uint16_t* pair_at(uint16_t* packed, int64_t chunks, int t, int64_t p) {
  return packed + (t * chunks + p / kTile) * kTileSize + p % kTile * kDepth;
}

// The GELU of a 32 x 32 result of the first product, packed as rows [32 m, 32 m + 32) of
// the second product's B operands, a few row pairs at a time.
class GeluPack {
 public:
  GeluPack(uint16_t* mixed, int64_t chunks) : mixed_(mixed), chunks_(chunks) {}

  void start(const float* c, int64_t m) {
    c_ = c;
    m_ = m;
    pair_ = 0;
  }

  void step(int64_t pairs) {
    for (; pairs > 0 && pair_ < kTile; --pairs, ++pair_) {
      const float* rows = c_ + 2 * pair_ * kBlock;
      for (int t = 0; t < 2; ++t) {
        const __m512 a = gelu_avx512(_mm512_load_ps(rows + t * kTile));
        const __m512 b = gelu_avx512(_mm512_load_ps(rows + kBlock + t * kTile));
        _mm512_store_si512(pair_at(mixed_, chunks_, t, m_ * kTile + pair_), row_pair(a, b));
      }
    }
  }

  void finish() { step(kTile); }

 private:
  uint16_t* mixed_;
  int64_t chunks_;
  const float* c_ = nullptr;
  int64_t m_ = 0, pair_ = kTile;
};

// A 32 x 32 result of the second product added, scaled, into token rows [first, first + 32)
// (those below k) of the block's columns, a few rows at a time.
class Residual {
 public:
  Residual(uint16_t* tokens, int64_t cols, int64_t k, const __mmask16* lanes,
           const __m512* gains)
      : tokens_(tokens), cols_(cols), k_(k), lanes_(lanes), gains_(gains) {}

  void start(const float* c, int64_t first) {
    c_ = c;
    first_ = first;
    row_ = 0;
  }

  void step(int64_t rows) {
    for (; rows > 0 && row_ < kBlock; --rows, ++row_) {
      if (first_ + row_ >= k_) continue;
      uint16_t* row = tokens_ + (first_ + row_) * cols_;
      for (int t = 0; t < 2; ++t) {
        const __m512 sum = _mm512_fmadd_ps(gains_[t], _mm512_load_ps(c_ + row_ * kBlock + t * kTile),
                                           load_bf16(row + t * kTile, lanes_[t]));
        _mm256_mask_storeu_epi16(row + t * kTile, lanes_[t], (__m256i)_mm512_cvtneps_pbh(sum));
      }
    }
  }

  void finish() { step(kBlock); }

 private:
  uint16_t* tokens_;
  int64_t cols_, k_;
  const __mmask16* lanes_;
  const __m512* gains_;
  const float* c_ = nullptr;
  int64_t first_ = 0, row_ = kBlock;
};

}  // namespace

void token_mix_amx(uint16_t* tokens, int64_t k, int64_t cols, int64_t width,
                   const uint16_t* w_in, const uint16_t* w_out, const float* scale) {
  const int64_t hidden = 2 * k;
  const int64_t in_chunks = token_mix_depth(k + 1) / kDepth;
  const int64_t out_chunks = token_mix_depth(hidden + 1) / kDepth;
  const int64_t in_blocks = token_mix_rows(hidden) / kBlock, out_blocks = token_mix_rows(k) / kBlock;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  // row pairs (rows) of the previous result per chunk of the next products: all of them
  const int64_t pairs_per_step = (kTile + in_chunks - 1) / in_chunks;
  const int64_t rows_per_step = (kBlock + out_chunks - 1) / out_chunks;
  // the next block's token lines (one per row) asked for per chunk of the first products
  const int64_t lines_per_step = (k + in_blocks * in_chunks) / (in_blocks * in_chunks);
#pragma omp parallel
  {
    load_tile_config();
    // packed B operands of the block's two column tiles, two float32 results
    AlignedBuffer<uint16_t> in(2 * in_chunks * kTileSize), mixed(2 * out_chunks * kTileSize);
    AlignedBuffer<float> c(2 * kBlock * kBlock);
    const __m512 ones = _mm512_set1_ps(1.f), zeros = _mm512_setzero_ps();
    GeluPack gelu_pack(mixed.data(), out_chunks);
    // the next block's k + 1 token lines, rows 2 KB or more apart that the hardware does not
    // fetch ahead, asked for a few at a time during this block's first products
    int64_t ahead_row = k + 1, ahead_col = 0;
    auto prefetch_next = [&](int64_t lines) {
      for (; lines > 0 && ahead_row <= k; --lines, ++ahead_row) {
        _mm_prefetch(reinterpret_cast<const char*>(tokens + ahead_row * cols + ahead_col),
                     _MM_HINT_T0);
      }
    };
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      if (block + 1 < blocks) {
        ahead_row = 0;
        ahead_col = (block + 1) * kBlock;
      }
      const int64_t c0 = block * kBlock;
      __mmask16 lanes[2];
      __m512 gains[2];
      for (int t = 0; t < 2; ++t) {
        const int64_t left = cols - c0 - t * kTile;
        lanes[t] = first_lanes(left);
        float lane_scale[kTile] = {};
        for (int64_t j = 0; j < kTile && j < left; ++j) {
          lane_scale[j] = scale[(c0 + t * kTile + j) % width];
        }
        gains[t] = _mm512_loadu_ps(lane_scale);
      }
      for (int64_t p = 0; p < in_chunks * kTile; ++p) {
        for (int t = 0; t < 2; ++t) {
          const uint16_t* row = tokens + 2 * p * cols + c0 + t * kTile;
          const __m512 a = 2 * p <= k ? load_bf16(row, lanes[t]) : zeros;
          const __m512 b = 2 * p + 1 <= k ? load_bf16(row + cols, lanes[t]) : zeros;
          _mm512_store_si512(pair_at(in.data(), in_chunks, t, p), row_pair(a, b));
        }
      }
      for (int64_t m = 0; m < in_blocks; ++m) {
        float* result = c.data() + m % 2 * kBlock * kBlock;
        const uint16_t* w = w_in + m * in_chunks * kBlock * kDepth;
        products_2x2(w, in.data(), in.data() + in_chunks * kTileSize, in_chunks,
                     [&](int64_t) {
                       gelu_pack.step(pairs_per_step);
                       prefetch_next(lines_per_step);
                     });
        gelu_pack.finish();
        store_results(result);
        gelu_pack.start(result, m);
      }
      gelu_pack.finish();
      // row `hidden` is the bias row of ones (w_out's column 2k), every row after it zero
      for (int64_t p = hidden / 2; p < out_chunks * kTile; ++p) {
        for (int t = 0; t < 2; ++t) {
          _mm512_store_si512(pair_at(mixed.data(), out_chunks, t, p),
                             row_pair(2 * p == hidden ? ones : zeros, zeros));
        }
      }
      Residual residual(tokens + c0, cols, k, lanes, gains);
      for (int64_t m = 0; m < out_blocks; ++m) {
        float* result = c.data() + m % 2 * kBlock * kBlock;
        const uint16_t* w = w_out + m * out_chunks * kBlock * kDepth;
        products_2x2(w, mixed.data(), mixed.data() + out_chunks * kTileSize, out_chunks,
                     [&](int64_t) { residual.step(rows_per_step); });
        residual.finish();
        store_results(result);
        residual.start(result, m * kBlock);
      }
      residual.finish();
    }
    _tile_release();
  }
}

}  // namespace sepfl
