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
// Bad input: each kernel checks the entries it reads, as its CPU twin does,
// and instead of throwing (it cannot) writes the smallest bad position to a
// flag in `bad`, an int64 array the caller sets to -1: bad[0] for the input
// named first below, bad[1] for the second. sepfl.ops reads the flags once
// after the launch and raises; a bad entry is otherwise skipped, so nothing
// is read or written out of bounds.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sepfl {

// Number of CUDA devices usable by this module (0 when there is no driver or GPU).
int device_count_cuda();

// sims [n, k] -> density [n]; workspace: float [n + 2] scratch. bad[0]: a row holding NaN.
void density_cuda(const float* sims, int64_t n, int64_t k, float rho, float* density,
                  float* workspace, int64_t* bad, std::uintptr_t stream);

// See select_pairs_cpu: nbrs [n, k], density [n] -> dst_padded [n, width].
// bad[0]: a position in nbrs.
void select_pairs_cuda(const int64_t* nbrs, const float* density, int64_t n, int64_t k,
                       int64_t width, int64_t* dst_padded, int64_t* bad, std::uintptr_t stream);

// See train_pairs_cpu: nbrs [n, k], labels [n] -> dst_padded, target_padded [n, ranks].
// bad[0]: a position in nbrs.
void train_pairs_cuda(const int64_t* nbrs, const int64_t* labels, int64_t n, int64_t k,
                      int64_t ranks, int64_t* dst_padded, int64_t* target_padded, int64_t* bad,
                      std::uintptr_t stream);

// See gather_cpu. bad[0]: a position in node_ids, bad[1]: a position in nbrs.
void gather_cuda(const float* features, const int64_t* nbrs, const int64_t* node_ids, int64_t n,
                 int64_t k, int64_t d, int64_t b, float* out, int64_t* bad,
                 std::uintptr_t stream);

// See gather_add_cpu (bias may be nullptr). bad as for gather_cuda.
void gather_add_cuda(const float* a, const float* bproj, const int64_t* nbrs,
                     const int64_t* node_ids, const float* bias, bool gelu, int64_t n, int64_t k,
                     int64_t h, int64_t b, float* out, int64_t* bad, std::uintptr_t stream);

// See aggregate_cpu. bad as for gather_cuda.
void aggregate_cuda(const float* weights, const float* features, const int64_t* nbrs,
                    const int64_t* node_ids, int64_t n, int64_t k, int64_t d, int64_t b,
                    float* out, int64_t* bad, std::uintptr_t stream);

// Bytes of scratch link_cuda needs for num_nodes nodes.
size_t link_workspace_bytes_cuda(int64_t num_nodes);

// See link_cpu: edges (src, dst) [e] -> labels [num_nodes], numbered 0..C-1 in order of
// each component's smallest member. workspace: link_workspace_bytes_cuda(num_nodes) bytes
// of scratch. bad[0]: an edge with an endpoint outside [0, num_nodes).
void link_cuda(const int64_t* src, const int64_t* dst, const float* scores, float threshold,
               int64_t num_edges, int64_t num_nodes, int64_t* labels, void* workspace,
               size_t workspace_bytes, int64_t* bad, std::uintptr_t stream);

}  // namespace sepfl
