// CPU kernels of sepfl. Plain functions over raw pointers and sizes: every
// array is C-contiguous, values float32, indices int64. The Python layer
// (python/sepfl/ops.py) validates dtypes and shapes; these functions check
// the data-dependent preconditions (index ranges, NaN) during their own pass
// and throw std::out_of_range / std::invalid_argument. Of several bad indices
// the one at the smallest position is reported (bad_index.h), as on CUDA.
//
// select_pairs and train_pairs write padded [n, m] tables, the layout their
// CUDA twins write; compact_cpu turns one into pairs.
//
// Missing neighbours: an entry -1 in `nbrs` (faiss's marker for "no
// neighbour") is an empty slot. It is never selected as a pair partner and
// contributes a zero feature vector to gather / gather_add / aggregate.
#pragma once

#include <cstdint>
#include <vector>

namespace sepfl {

// sims [n, k] -> density [n]: combined density (SEPFL §2) with s = clip(sim, 0, 1),
// a = sum_j s, c = #{s >= rho}, density = (a / max a + c / max c) / 2.
// Throws invalid_argument if a similarity is NaN.
void density_cpu(const float* sims, int64_t n, int64_t k, float rho, float* density);

// nbrs [n, k], density [n] -> dst_padded [n, width]: for each node, its first `width`
// distinct neighbours (kNN order) whose density is strictly greater than its own,
// then -1 (width is select_pairs_width of preconditions.h). compact_cpu turns it into pairs.
void select_pairs_cpu(const int64_t* nbrs, const float* density, int64_t n, int64_t k,
                      int64_t width, int64_t* dst_padded);

// nbrs [n, k], labels [n] -> dst_padded, target_padded [n, ranks]: slot r-1 holds
// (nbrs[i, r], 1 when the labels match) for ranks r = 1..ranks; dst -1 (target 0) where
// the entry is -1 or the node itself. compact_cpu turns it into pairs.
void train_pairs_cpu(const int64_t* nbrs, const int64_t* labels, int64_t n, int64_t k,
                     int64_t ranks, int64_t* dst_padded, int64_t* target_padded);

// Number of entries >= 0 among padded [size].
int64_t count_entries_cpu(const int64_t* padded, int64_t size);

// padded [n, m] (-1 = no entry), alongside [n, m] or nullptr -> rows, entries,
// alongside_out [count_entries_cpu]: row index, entry and alongside value of every
// entry >= 0, in row-major order (so pairs come ordered by source, then slot).
void compact_cpu(const int64_t* padded, const int64_t* alongside, int64_t n, int64_t m,
                 int64_t* rows, int64_t* entries, int64_t* alongside_out);

// features [n, d], nbrs [n, k], node_ids [b] -> out [b, k, d]:
// out[i, j] = features[nbrs[node_ids[i], j]] (zeros for a -1 slot).
void gather_cpu(const float* features, const int64_t* nbrs, const int64_t* node_ids, int64_t n,
                int64_t k, int64_t d, int64_t b, float* out);

// a [n, h], bproj [n, h], nbrs [n, k], node_ids [b], bias [h] or nullptr -> out [b, k, h]:
// out[i, j] = act(a[u] + bproj[nbrs[u, j]] + bias), u = node_ids[i]; act = exact (erf) GELU
// or identity. A -1 slot contributes no bproj term.
void gather_add_cpu(const float* a, const float* bproj, const int64_t* nbrs,
                    const int64_t* node_ids, const float* bias, bool gelu, int64_t n, int64_t k,
                    int64_t h, int64_t b, float* out);

// weights [b, k], features [n, d], nbrs [n, k], node_ids [b] -> out [b, d]:
// out[i] = sum_j weights[i, j] * features[nbrs[node_ids[i], j]] (a -1 slot adds nothing).
void aggregate_cpu(const float* weights, const float* features, const int64_t* nbrs,
                   const int64_t* node_ids, int64_t n, int64_t k, int64_t d, int64_t b,
                   float* out);

// Whether the AMX kernels (token_mix_cpu, channel_mix_cpu, attention_scores_cpu) run here:
// this build has them, the CPU lists AMX-BF16 and AVX-512 BF16, and Linux grants this
// process the tile state (bf16_dispatch_cpu.cpp).
bool amx_ready();
// The token-mixing step of the node embeddings' bfloat16 path, in place on tokens
// [k + 1, cols] (bfloat16 bits; row k all ones, the bias row): for rows r < k,
//   tokens[r, c] += scale[c % width] * sum_j w_out[r, j] * m[j, c],
//   m = [GELU(w_in @ tokens); 1] (exact-form GELU, float32 sums, m rounded to bfloat16),
// where w_in holds the first token-mix Linear with its bias as column k, zero-padded to
// [token_mix_rows(2k), token_mix_depth(k + 1)], and w_out the second with its bias as
// column 2k, padded to [token_mix_rows(k), token_mix_depth(2k + 1)], both as AMX A tiles
// (bfloat16 bits [rows / 32, depth / 32, 32, 32], element [i, c, r, j] = W[32 i + r,
// 32 c + j]); scale [width] float32, cols a multiple of width. Only where amx_ready(): AMX-BF16
// (token_mix_amx.cpp); throws std::runtime_error elsewhere.
void token_mix_cpu(uint16_t* tokens, int64_t k, int64_t cols, int64_t width,
                   const uint16_t* w_in, const uint16_t* w_out, const float* scale);
// table [*, width] and pairs [rows, 2] -> out [rows, width], all bfloat16 bits but pairs:
// out[i] = GELU(table[pairs[i, 0]] + table[pairs[i, 1]]) (exact-form GELU of the float32 sum,
// rounded to bfloat16 once): the node embeddings' first hidden activations from their
// factorised tables. Pairs are trusted (the binding checks them). Only where
// gather_gelu_ready(): AVX-512 BF16 (gather_gelu_avx512.cpp); throws std::runtime_error
// elsewhere.
bool gather_gelu_ready();
void gather_gelu_cpu(const uint16_t* table, int64_t width, const int64_t* pairs, int64_t rows,
                     uint16_t* out);
// The channel-mixing step of the node embeddings' bfloat16 path: tokens [*, width] and
// hidden [*, depth] (two tables with the same rows), pairs [rows, 2] -> out [rows, width],
// all bfloat16 bits but pairs:
//   out[i] = tokens[a] + tokens[b] + W @ GELU(hidden[a] + hidden[b]),  (a, b) = pairs[i],
// the GELU the exact form of the float32 sum rounded to bfloat16 once, the products and the
// sum in float32, out rounded once. W [width, depth] (the second channel-mix Linear) comes
// packed as AMX B tiles: weights [channel_mix_width(width) / 16, channel_mix_depth(depth) /
// 32, 16, 32], element [t, c, r, 2j + s] = W[16t + j, 32c + 2r + s], zero past W's edges.
// Pairs are trusted (the binding checks them). Only where amx_ready(): AMX-BF16
// (channel_mix_amx.cpp); throws std::runtime_error elsewhere.
void channel_mix_cpu(const uint16_t* tokens, int64_t width, const uint16_t* hidden,
                     int64_t depth, const int64_t* pairs, int64_t rows, const uint16_t* weights,
                     uint16_t* out);
// The attention scores of the node embeddings' bfloat16 path: x [rows, width] bfloat16 bits
// -> scores [rows] float32,
//   scores[i] = sum_c out_w[c] * GELU(bias[c] + (W x[i])[c]),  c < out,
// all in float32 (exact-form GELU, nothing rounded). W [out, width] (the first attention
// Linear) comes packed as channel_mix_cpu's weights are (depth = width); bias, out_w [out]
// float32. Only where amx_ready() (attention_amx.cpp); throws std::runtime_error
// elsewhere.
void attention_scores_cpu(const uint16_t* x, int64_t rows, int64_t width,
                          const uint16_t* weights, int64_t out, const float* bias,
                          const float* out_w, float* scores);
// Padded shape of channel_mix_cpu's weights: output columns to a multiple of 32 (two result
// tiles per step), depth to a multiple of 32 (one AMX product's depth).
constexpr int64_t channel_mix_width(int64_t width) { return (width + 31) / 32 * 32; }
constexpr int64_t channel_mix_depth(int64_t depth) { return (depth + 31) / 32 * 32; }
// Padded weight shapes of token_mix_cpu: rows to a multiple of 32 (two AMX tiles' rows),
// columns to a multiple of 32 (the bfloat16 depth of one AMX product).
constexpr int64_t token_mix_rows(int64_t rows) { return (rows + 31) / 32 * 32; }
constexpr int64_t token_mix_depth(int64_t cols) { return (cols + 31) / 32 * 32; }

// nbrs [n, k], edges (src, dst) [e] -> shared, reverse [e]: shared[i] = how many entries
// of dst[i]'s list are in src[i]'s list (-1 slots never count), reverse[i] = the first
// rank at which src[i] appears in dst[i]'s list, k when it does not.
void shared_neighbours_cpu(const int64_t* nbrs, const int64_t* src, const int64_t* dst,
                           int64_t n, int64_t k, int64_t num_edges, int64_t* shared,
                           int64_t* reverse);

// features [n, d], rows [m], lists [m, w] -> out [m, w]: out[i, j] =
// features[rows[i]] . features[lists[i, j]], each summed in one fixed order (the same bits
// whatever m, w or the threads), -inf for a -1 entry. Throws out_of_range for a row outside
// [0, n) or another entry outside [-1, n).
void list_dots_cpu(const float* features, const int64_t* rows, const int64_t* lists, int64_t n,
                   int64_t d, int64_t m, int64_t w, float* out);

// The top entries of each of `rows` rows of a score matrix fed in tiles of columns (the
// selection step of a brute-force kNN search, whose [rows, N] block never exists whole):
// row i's own column own[i] first, then its width - 1 largest entries among the other
// columns offered, in non-increasing order (ties: the smaller column first). An entry is
// looked at twice only when it beats the (width - 1)-th best of its row so far; the
// vectorised scan reads every other entry once. With `above` [rows] (optional), row i
// keeps only entries greater than above[i]. The bf16 tiles hold bfloat16 bits (the
// upper half of a float32). Not thread-safe; each call runs OpenMP over the rows. Ties
// are decided as stated when each row's columns arrive in increasing order.
class RowTopk {
 public:
  RowTopk(int64_t rows, int64_t width, const int64_t* own, const float* above = nullptr);
  // tile [tile_rows, cols], C-contiguous: rows first_row .. first_row + tile_rows - 1,
  // columns first_col .. first_col + cols - 1. With `mirror`, the tile is also offered to
  // rows first_col .. first_col + cols - 1 as their columns first_row .. (a symmetric
  // search computes a product once for both sides); the two ranges of rows must not meet.
  void offer(const float* tile, int64_t tile_rows, int64_t cols, int64_t first_row,
             int64_t first_col, bool mirror);
  void offer(const uint16_t* tile, int64_t tile_rows, int64_t cols, int64_t first_row,
             int64_t first_col, bool mirror);
  // Rows start .. stop - 1: idx [stop - start, width] (-1 where fewer than width - 1 other
  // columns were offered), vals [stop - start, width] (own column +inf, missing -inf).
  void result(int64_t start, int64_t stop, int64_t* idx, float* vals);
  int64_t rows() const { return rows_; }
  int64_t width() const { return keep_ + 1; }

 private:
  template <typename T>
  void offer_tile(const T* tile, int64_t tile_rows, int64_t cols, int64_t first_row,
                  int64_t first_col, bool mirror);
  // The rows' side of a tile, a share of an enclosing OpenMP region's threads.
  template <typename T>
  void offer_rows(const T* tile, int64_t tile_rows, int64_t cols, int64_t first_row,
                  int64_t first_col);
  // Both sides of a mirrored tile, each score read once: the columns' lists take their
  // entries during the scan, the rows' after it (row_hits_, one buffer per thread).
  template <typename T>
  void offer_mirrored(const T* tile, int64_t tile_rows, int64_t cols, int64_t first_row,
                      int64_t first_col);
  // Offer the entry (val, col) to row i: kept when it beats the row's floor.
  void take(int64_t i, float val, int64_t col);
  // Keep row i's best min(count, width - 1) entries (best first when `sorted`), and
  // raise its floor once it holds width - 1.
  void cut(int64_t i, bool sorted);

  int64_t rows_, keep_;
  std::vector<int64_t> own_;
  std::vector<float> floors_;
  std::vector<int64_t> count_;
  // Per row, room for 2 * (width - 1) candidates, each as its rank: the key of its value
  // above the complement of its column, so that the better of two entries (the larger
  // value, then the smaller column) has the greater rank and a cut compares integers.
  std::vector<uint64_t> entries_;
  // An entry of a mirrored tile's row found by the scan: tile row, column, value.
  struct RowHit {
    int64_t row, col;
    float val;
  };
  std::vector<std::vector<RowHit>> row_hits_;
};

// Edges (src, dst) [e] over num_nodes nodes; keeps edge i when scores == nullptr or
// scores[i] > threshold. Writes labels [num_nodes] of the connected components, numbered
// 0..C-1 in order of each component's smallest member; returns C.
int64_t link_cpu(const int64_t* src, const int64_t* dst, const float* scores, float threshold,
                 int64_t num_edges, int64_t num_nodes, int64_t* labels);

}  // namespace sepfl
