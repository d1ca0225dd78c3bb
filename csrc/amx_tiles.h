// AMX tile helpers shared by the kernels compiled with -mamx-tile -mamx-bf16
// (token_mix_amx.cpp, channel_mix_amx.cpp, attention_amx.cpp): the tile configuration and
// the 2 x 2 product block that the channel mix and the attention scores are built from.
// Include this only from files built with those flags.
#pragma once

#include <immintrin.h>

#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace sepfl {

constexpr int64_t kTile = 16;          // rows of a tile, columns of a float32 result tile
constexpr int64_t kDepth = 32;         // bfloat16 values of an A tile row (one product's depth)
constexpr int64_t kBlock = 2 * kTile;  // rows and columns of a 2 x 2 block of result tiles
constexpr int64_t kTileSize = kTile * kDepth;  // bfloat16 values of an A or B tile

// Palette 1, all eight tiles 16 rows of 64 bytes. Per thread, before any other tile
// instruction.
inline void load_tile_config() {
  struct {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
  } config;
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = kTile;
  }
  _tile_loadconfig(&config);
}

// A 32 x 32 float32 result block in tiles 0-3 (row tile i, column tile j in 2i + j) of
// a @ w over `chunks` products 32 deep: a holds 32 rows in tile order (chunk kc's two A
// tiles at a + kc * 1024, one 1 KB piece each), w0 and w1 the packed B tiles of the two
// column tiles (chunk kc's at + kc * 512). Tiles 4-7 are the operands. `between(kc)` runs
// after each chunk's products are issued: AVX-512 work placed there overlaps with them.
template <typename Between>
inline void products_2x2(const uint16_t* a, const uint16_t* w0, const uint16_t* w1,
                         int64_t chunks, Between&& between) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kc = 0; kc < chunks; ++kc) {
    _tile_loadd(4, a + kc * kBlock * kDepth, 64);
    _tile_loadd(5, a + (kc * kBlock + kTile) * kDepth, 64);
    _tile_loadd(6, w0 + kc * kTileSize, 64);
    _tile_loadd(7, w1 + kc * kTileSize, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
    between(kc);
  }
}

// This thread's contiguous share [lo, hi) of `blocks` blocks, inside an OpenMP parallel
// region (all of them without OpenMP): contiguous, so that a thread can prepare its next
// block while it works on the current one.
struct BlockRange {
  int64_t lo, hi;
};

inline BlockRange thread_blocks(int64_t blocks) {
  int64_t threads = 1, thread = 0;
#if defined(_OPENMP)
  threads = omp_get_num_threads();
  thread = omp_get_thread_num();
#endif
  return {blocks * thread / threads, blocks * (thread + 1) / threads};
}

// Tiles 0-3 into c as [32 rows][32 columns] float32.
inline void store_results(float* c) {
  _tile_stored(0, c, kBlock * 4);
  _tile_stored(1, c + kTile, kBlock * 4);
  _tile_stored(2, c + kTile * kBlock, kBlock * 4);
  _tile_stored(3, c + kTile * kBlock + kTile, kBlock * 4);
}

}  // namespace sepfl
