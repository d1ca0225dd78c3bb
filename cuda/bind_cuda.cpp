// pybind11 glue of sepfl._cuda: device pointers (torch's data_ptr(), 0 for an
// absent optional array), sizes and the CUDA stream arrive as Python ints and
// are forwarded to the kernels of ops_cuda.h. Python allocates and validates;
// this layer re-checks sizes and pointers so a direct call cannot launch on
// null or negative-size arrays. The kernels only enqueue work, but the GIL is
// released anyway so that a launch stalled behind a full queue blocks no
// other Python thread.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "check.h"
#include "ops_cuda.h"

namespace py = pybind11;

namespace bind {

using Ptr = std::uintptr_t;

template <typename T>
T* as(Ptr p) {
  return reinterpret_cast<T*>(p);
}

void require_size(int64_t value, const char* name) {
  SEPFL_CHECK(value >= 0, name << " must be >= 0, got " << value);
}

// `used`: whether the kernel will dereference the pointer for these sizes.
void require_pointer(Ptr p, bool used, const char* name) {
  SEPFL_CHECK(p != 0 || !used, name << " is a null pointer");
}

void density(Ptr sims, int64_t n, int64_t k, float rho, Ptr density, Ptr workspace, Ptr stream) {
  require_size(n, "n");
  require_size(k, "k");
  require_pointer(sims, n > 0 && k > 0, "sims");
  require_pointer(density, n > 0, "density");
  require_pointer(workspace, n > 0, "workspace");
  sepfl::density_cuda(as<const float>(sims), n, k, rho, as<float>(density), as<float>(workspace),
                      stream);
}

void select_pairs(Ptr nbrs, Ptr density, int64_t n, int64_t k, int64_t max_per_node,
                  Ptr dst_padded, Ptr stream) {
  require_size(n, "n");
  require_size(k, "k");
  SEPFL_CHECK(max_per_node >= 1, "max_per_node must be >= 1, got " << max_per_node);
  require_pointer(nbrs, n > 0 && k > 0, "nbrs");
  require_pointer(density, n > 0, "density");
  require_pointer(dst_padded, n > 0, "dst_padded");
  sepfl::select_pairs_cuda(as<const int64_t>(nbrs), as<const float>(density), n, k, max_per_node,
                           as<int64_t>(dst_padded), stream);
}

void train_pairs(Ptr nbrs, Ptr labels, int64_t n, int64_t k, int64_t ranks, Ptr dst_padded,
                 Ptr target_padded, Ptr stream) {
  require_size(n, "n");
  SEPFL_CHECK(ranks >= 1 && ranks < k, "ranks must be in [1, k), got " << ranks << " with k=" << k);
  require_pointer(nbrs, n > 0, "nbrs");
  require_pointer(labels, n > 0, "labels");
  require_pointer(dst_padded, n > 0, "dst_padded");
  require_pointer(target_padded, n > 0, "target_padded");
  sepfl::train_pairs_cuda(as<const int64_t>(nbrs), as<const int64_t>(labels), n, k, ranks,
                          as<int64_t>(dst_padded), as<int64_t>(target_padded), stream);
}

void gather(Ptr features, Ptr nbrs, Ptr node_ids, int64_t n, int64_t k, int64_t d, int64_t b,
            Ptr out, Ptr stream) {
  require_size(n, "n");
  require_size(k, "k");
  require_size(d, "d");
  require_size(b, "b");
  const bool work = b > 0 && k > 0 && d > 0;
  require_pointer(features, work && n > 0, "features");
  require_pointer(nbrs, work && n > 0, "nbrs");
  require_pointer(node_ids, work, "node_ids");
  require_pointer(out, work, "out");
  sepfl::gather_cuda(as<const float>(features), as<const int64_t>(nbrs),
                     as<const int64_t>(node_ids), n, k, d, b, as<float>(out), stream);
}

void gather_add(Ptr a, Ptr bproj, Ptr nbrs, Ptr node_ids, Ptr bias, bool gelu, int64_t n,
                int64_t k, int64_t h, int64_t b, Ptr out, Ptr stream) {
  require_size(n, "n");
  require_size(k, "k");
  require_size(h, "h");
  require_size(b, "b");
  const bool work = b > 0 && k > 0 && h > 0;
  require_pointer(a, work && n > 0, "a");
  require_pointer(bproj, work && n > 0, "bproj");
  require_pointer(nbrs, work && n > 0, "nbrs");
  require_pointer(node_ids, work, "node_ids");
  require_pointer(out, work, "out");
  sepfl::gather_add_cuda(as<const float>(a), as<const float>(bproj), as<const int64_t>(nbrs),
                         as<const int64_t>(node_ids), as<const float>(bias), gelu, n, k, h, b,
                         as<float>(out), stream);
}

void aggregate(Ptr weights, Ptr features, Ptr nbrs, Ptr node_ids, int64_t n, int64_t k,
               int64_t d, int64_t b, Ptr out, Ptr stream) {
  require_size(n, "n");
  require_size(k, "k");
  require_size(d, "d");
  require_size(b, "b");
  const bool work = b > 0 && d > 0;
  require_pointer(weights, work && k > 0, "weights");
  require_pointer(features, work && k > 0 && n > 0, "features");
  require_pointer(nbrs, work && k > 0 && n > 0, "nbrs");
  require_pointer(node_ids, work, "node_ids");
  require_pointer(out, work, "out");
  sepfl::aggregate_cuda(as<const float>(weights), as<const float>(features),
                        as<const int64_t>(nbrs), as<const int64_t>(node_ids), n, k, d, b,
                        as<float>(out), stream);
}

void link(Ptr src, Ptr dst, Ptr scores, float threshold, int64_t num_edges, int64_t num_nodes,
          Ptr roots, Ptr stream) {
  require_size(num_edges, "num_edges");
  require_size(num_nodes, "num_nodes");
  const bool edges = num_nodes > 0 && num_edges > 0;
  require_pointer(src, edges, "src");
  require_pointer(dst, edges, "dst");
  require_pointer(roots, num_nodes > 0, "roots");
  sepfl::link_cuda(as<const int64_t>(src), as<const int64_t>(dst), as<const float>(scores),
                   threshold, num_edges, num_nodes, as<int64_t>(roots), stream);
}

}  // namespace bind

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "sepfl CUDA kernels (device pointers as ints, float32 values, int64 indices, "
            "C-contiguous; work is enqueued on the given stream)";
  using Release = py::call_guard<py::gil_scoped_release>;
  m.def("device_count", &sepfl::device_count_cuda,
        "Number of usable CUDA devices, 0 without a driver or GPU.");
  m.def("density", &bind::density, py::arg("sims"), py::arg("n"), py::arg("k"), py::arg("rho"),
        py::arg("density"), py::arg("workspace"), py::arg("stream"), Release());
  m.def("select_pairs", &bind::select_pairs, py::arg("nbrs"), py::arg("density"), py::arg("n"),
        py::arg("k"), py::arg("max_per_node"), py::arg("dst_padded"), py::arg("stream"),
        Release());
  m.def("train_pairs", &bind::train_pairs, py::arg("nbrs"), py::arg("labels"), py::arg("n"),
        py::arg("k"), py::arg("ranks"), py::arg("dst_padded"), py::arg("target_padded"),
        py::arg("stream"), Release());
  m.def("gather", &bind::gather, py::arg("features"), py::arg("nbrs"), py::arg("node_ids"),
        py::arg("n"), py::arg("k"), py::arg("d"), py::arg("b"), py::arg("out"),
        py::arg("stream"), Release());
  m.def("gather_add", &bind::gather_add, py::arg("a"), py::arg("bproj"), py::arg("nbrs"),
        py::arg("node_ids"), py::arg("bias"), py::arg("gelu"), py::arg("n"), py::arg("k"),
        py::arg("h"), py::arg("b"), py::arg("out"), py::arg("stream"), Release());
  m.def("aggregate", &bind::aggregate, py::arg("weights"), py::arg("features"), py::arg("nbrs"),
        py::arg("node_ids"), py::arg("n"), py::arg("k"), py::arg("d"), py::arg("b"),
        py::arg("out"), py::arg("stream"), Release());
  m.def("link", &bind::link, py::arg("src"), py::arg("dst"), py::arg("scores"),
        py::arg("threshold"), py::arg("num_edges"), py::arg("num_nodes"), py::arg("roots"),
        py::arg("stream"), Release());
}
