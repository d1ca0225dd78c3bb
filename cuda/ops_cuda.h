// CUDA kernels of sepfl. Plain host functions over raw device pointers, sizes
// and the CUDA stream to launch on (torch.cuda.current_stream().cuda_stream,
// passed as an integer). Same conventions as csrc/ops_cpu.h: C-contiguous
// arrays, float32 values, int64 indices, -1 in `nbrs` is an empty slot.
//
// torch owns all memory: outputs and workspaces are allocated by the caller.
// Nothing here allocates or synchronises; launches are checked with
// cudaGetLastError, and SEPFL_CUDA_SYNC=1 in the environment adds a stream
// synchronisation after each operation for debugging.
//
// Index ranges and NaN are validated by the Python layer (on the device)
// before these are called; the kernels still skip any index outside
// [0, n) so that a direct call cannot read or write out of bounds.
#pragma once

#include <cstdint>

namespace sepfl {

// Number of CUDA devices usable by this module (0 when there is no driver or GPU).
int device_count_cuda();

// sims [n, k] -> density [n]; workspace: float [n + 2] scratch.
void density_cuda(const float* sims, int64_t n, int64_t k, float rho, float* density,
                  float* workspace, std::uintptr_t stream);

// nbrs [n, k], density [n] -> dst_padded [n, max_per_node], -1 where fewer denser
// neighbours exist (first distinct strictly-denser neighbours, kNN order).
void select_pairs_cuda(const int64_t* nbrs, const float* density, int64_t n, int64_t k,
                       int64_t max_per_node, int64_t* dst_padded, std::uintptr_t stream);

// nbrs [n, k], labels [n] -> dst_padded, target_padded [n, ranks]: slot r-1 holds
// (nbrs[i, r], labels match) for ranks r = 1..ranks, dst -1 where the entry is -1
// or the node itself (the caller compacts).
void train_pairs_cuda(const int64_t* nbrs, const int64_t* labels, int64_t n, int64_t k,
                      int64_t ranks, int64_t* dst_padded, int64_t* target_padded,
                      std::uintptr_t stream);

// See gather_cpu.
void gather_cuda(const float* features, const int64_t* nbrs, const int64_t* node_ids, int64_t n,
                 int64_t k, int64_t d, int64_t b, float* out, std::uintptr_t stream);

// See gather_add_cpu (bias may be nullptr).
void gather_add_cuda(const float* a, const float* bproj, const int64_t* nbrs,
                     const int64_t* node_ids, const float* bias, bool gelu, int64_t n, int64_t k,
                     int64_t h, int64_t b, float* out, std::uintptr_t stream);

// See aggregate_cpu.
void aggregate_cuda(const float* weights, const float* features, const int64_t* nbrs,
                    const int64_t* node_ids, int64_t n, int64_t k, int64_t d, int64_t b,
                    float* out, std::uintptr_t stream);

// Edges (src, dst) [e]; keeps edge i when scores == nullptr or scores[i] > threshold.
// Writes roots [num_nodes]: for each node, the smallest node id of its connected
// component. The caller turns roots into labels 0..C-1 (order of smallest member).
void link_cuda(const int64_t* src, const int64_t* dst, const float* scores, float threshold,
               int64_t num_edges, int64_t num_nodes, int64_t* roots, std::uintptr_t stream);

}  // namespace sepfl
