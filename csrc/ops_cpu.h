// CPU kernels of sepfl. Plain functions over raw pointers and sizes: every
// array is C-contiguous, values float32, indices int64. The Python layer
// (python/sepfl/ops.py) validates dtypes and shapes; these functions check
// the data-dependent preconditions (index ranges, NaN) during their own pass
// and throw std::out_of_range / std::invalid_argument.
//
// Missing neighbours: an entry -1 in `nbrs` (faiss's marker for "no
// neighbour") is an empty slot. It is never selected as a pair partner and
// contributes a zero feature vector to gather / gather_add / aggregate.
#pragma once

#include <cstdint>

namespace sepfl {

// sims [n, k] -> density [n]: combined density (SEPFL §2) with s = clip(sim, 0, 1),
// a = sum_j s, c = #{s >= rho}, density = (a / max a + c / max c) / 2.
// Throws invalid_argument if a similarity is NaN.
void density_cpu(const float* sims, int64_t n, int64_t k, float rho, float* density);

// nbrs [n, k], density [n] -> dst_padded [n, max_per_node], padded with -1:
// for each node, its first `max_per_node` distinct neighbours (kNN order) whose
// density is strictly greater than its own. Returns the number of pairs.
int64_t select_pairs_cpu(const int64_t* nbrs, const float* density, int64_t n, int64_t k,
                         int64_t max_per_node, int64_t* dst_padded);

// Compacts the padded output of select_pairs_cpu into (src, dst) [num_pairs],
// ordered by source node, then by kNN order.
void compact_pairs_cpu(const int64_t* dst_padded, int64_t n, int64_t max_per_node, int64_t* src,
                       int64_t* dst);

// Number of training pairs train_pairs_cpu will emit for ranks 1..ranks
// (entries that are -1 or the node itself are skipped).
int64_t count_train_pairs_cpu(const int64_t* nbrs, int64_t n, int64_t k, int64_t ranks);

// nbrs [n, k], labels [n] -> src, dst, target [num_pairs] (target 1 when the labels match),
// ordered by source node, then rank.
void train_pairs_cpu(const int64_t* nbrs, const int64_t* labels, int64_t n, int64_t k,
                     int64_t ranks, int64_t* src, int64_t* dst, int64_t* target);

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

// nbrs [n, k], edges (src, dst) [e] -> shared, reverse [e]: shared[i] = how many entries
// of dst[i]'s list are in src[i]'s list (-1 slots never count), reverse[i] = the first
// rank at which src[i] appears in dst[i]'s list, k when it does not.
void shared_neighbours_cpu(const int64_t* nbrs, const int64_t* src, const int64_t* dst,
                           int64_t n, int64_t k, int64_t num_edges, int64_t* shared,
                           int64_t* reverse);

// Edges (src, dst) [e] over num_nodes nodes; keeps edge i when scores == nullptr or
// scores[i] > threshold. Writes labels [num_nodes] of the connected components, numbered
// 0..C-1 in order of each component's smallest member; returns C.
int64_t link_cpu(const int64_t* src, const int64_t* dst, const float* scores, float threshold,
                 int64_t num_edges, int64_t num_nodes, int64_t* labels);

}  // namespace sepfl
