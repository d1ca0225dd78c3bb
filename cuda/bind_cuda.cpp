// pybind11 glue of sepfl._cuda: device pointers (torch's data_ptr(), 0 for an
// absent optional array), sizes and the CUDA stream arrive as Python ints and
// are forwarded to the kernels of ops_cuda.h. Python allocates and validates;
// this layer re-checks sizes and pointers so a direct call cannot launch on
// null or negative-size arrays. The kernels only enqueue work, but the GIL is
// released anyway so that a launch stalled behind a full queue blocks no
// other Python thread.
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>

#include "check.h"
#include "ops_cuda.h"
#include "preconditions.h"

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

void density(Ptr sims, int64_t n, int64_t k, float rho, Ptr density, Ptr workspace, Ptr bad,
             Ptr stream) {
  require_size(n, "n");
  require_size(k, "k");
  require_pointer(sims, n > 0 && k > 0, "sims");
  require_pointer(density, n > 0, "density");
  require_pointer(workspace, n > 0, "workspace");
  require_pointer(bad, n > 0, "bad");
  sepfl::density_cuda(as<const float>(sims), n, k, rho, as<float>(density), as<float>(workspace),
                      as<int64_t>(bad), stream);
}

void select_pairs(Ptr nbrs, Ptr density, int64_t n, int64_t k, int64_t max_per_node,
                  Ptr dst_padded, Ptr bad, Ptr stream) {
  require_size(n, "n");
  require_size(k, "k");
  const int64_t width = sepfl::select_pairs_width(max_per_node, k);
  require_pointer(nbrs, n > 0 && k > 0, "nbrs");
  require_pointer(density, n > 0, "density");
  require_pointer(dst_padded, n > 0, "dst_padded");
  require_pointer(bad, n > 0, "bad");
  sepfl::select_pairs_cuda(as<const int64_t>(nbrs), as<const float>(density), n, k, width,
                           as<int64_t>(dst_padded), as<int64_t>(bad), stream);
}

void train_pairs(Ptr nbrs, Ptr labels, int64_t n, int64_t k, int64_t ranks, Ptr dst_padded,
                 Ptr target_padded, Ptr bad, Ptr stream) {
  require_size(n, "n");
  sepfl::check_train_ranks(ranks, k);
  require_pointer(nbrs, n > 0, "nbrs");
  require_pointer(labels, n > 0, "labels");
  require_pointer(dst_padded, n > 0, "dst_padded");
  require_pointer(target_padded, n > 0, "target_padded");
  require_pointer(bad, n > 0, "bad");
  sepfl::train_pairs_cuda(as<const int64_t>(nbrs), as<const int64_t>(labels), n, k, ranks,
                          as<int64_t>(dst_padded), as<int64_t>(target_padded), as<int64_t>(bad),
                          stream);
}

// What the gathers read for these sizes: node_ids and the flags whenever b > 0,
// nbrs once a node can be valid and k > 0, rows of `width` values once width > 0.
struct GatherUse {
  bool nodes, entries, values;
};

// The checks every gather shares: the sizes n, k, b and the row width (`width_name` in
// messages), and the pointers nbrs [n, k], node_ids [b] and bad. Returns what the gather
// reads, for the caller to check its own value pointers against.
GatherUse require_gather(Ptr nbrs, Ptr node_ids, Ptr bad, int64_t n, int64_t k, int64_t width,
                         const char* width_name, int64_t b) {
  require_size(n, "n");
  require_size(k, "k");
  require_size(width, width_name);
  require_size(b, "b");
  const GatherUse use = {b > 0, b > 0 && n > 0 && k > 0, b > 0 && n > 0 && k > 0 && width > 0};
  require_pointer(nbrs, use.entries, "nbrs");
  require_pointer(node_ids, use.nodes, "node_ids");
  require_pointer(bad, use.nodes, "bad");
  return use;
}

void gather(Ptr features, Ptr nbrs, Ptr node_ids, int64_t n, int64_t k, int64_t d, int64_t b,
            Ptr out, Ptr bad, Ptr stream) {
  const GatherUse use = require_gather(nbrs, node_ids, bad, n, k, d, "d", b);
  require_pointer(features, use.values, "features");
  require_pointer(out, b > 0 && k > 0 && d > 0, "out");
  sepfl::gather_cuda(as<const float>(features), as<const int64_t>(nbrs),
                     as<const int64_t>(node_ids), n, k, d, b, as<float>(out), as<int64_t>(bad),
                     stream);
}

void gather_add(Ptr a, Ptr bproj, Ptr nbrs, Ptr node_ids, Ptr bias, bool gelu, int64_t n,
                int64_t k, int64_t h, int64_t b, Ptr out, Ptr bad, Ptr stream) {
  const GatherUse use = require_gather(nbrs, node_ids, bad, n, k, h, "h", b);
  require_pointer(a, use.values, "a");
  require_pointer(bproj, use.values, "bproj");
  require_pointer(out, b > 0 && k > 0 && h > 0, "out");
  sepfl::gather_add_cuda(as<const float>(a), as<const float>(bproj), as<const int64_t>(nbrs),
                         as<const int64_t>(node_ids), as<const float>(bias), gelu, n, k, h, b,
                         as<float>(out), as<int64_t>(bad), stream);
}

void aggregate(Ptr weights, Ptr features, Ptr nbrs, Ptr node_ids, int64_t n, int64_t k,
               int64_t d, int64_t b, Ptr out, Ptr bad, Ptr stream) {
  const GatherUse use = require_gather(nbrs, node_ids, bad, n, k, d, "d", b);
  require_pointer(weights, use.values, "weights");
  require_pointer(features, use.values, "features");
  require_pointer(out, b > 0 && d > 0, "out");
  sepfl::aggregate_cuda(as<const float>(weights), as<const float>(features),
                        as<const int64_t>(nbrs), as<const int64_t>(node_ids), n, k, d, b,
                        as<float>(out), as<int64_t>(bad), stream);
}

std::size_t link_workspace_bytes(int64_t num_nodes) {
  require_size(num_nodes, "num_nodes");
  return sepfl::link_workspace_bytes_cuda(num_nodes);
}

void link(Ptr src, Ptr dst, Ptr scores, float threshold, int64_t num_edges, int64_t num_nodes,
          Ptr labels, Ptr workspace, std::size_t workspace_bytes, Ptr bad, Ptr stream) {
  require_size(num_edges, "num_edges");
  require_size(num_nodes, "num_nodes");
  const bool edges = num_nodes > 0 && num_edges > 0;
  require_pointer(src, edges, "src");
  require_pointer(dst, edges, "dst");
  require_pointer(labels, num_nodes > 0, "labels");
  require_pointer(workspace, num_nodes > 0, "workspace");
  require_pointer(bad, edges, "bad");
  sepfl::link_cuda(as<const int64_t>(src), as<const int64_t>(dst), as<const float>(scores),
                   threshold, num_edges, num_nodes, as<int64_t>(labels), as<void>(workspace),
                   workspace_bytes, as<int64_t>(bad), stream);
}

}  // namespace bind

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "sepfl CUDA kernels (device pointers as ints, float32 values, int64 indices, "
            "C-contiguous; work is enqueued on the given stream)";
  using Release = py::call_guard<py::gil_scoped_release>;
  m.def("device_count", &sepfl::device_count_cuda,
        "Number of usable CUDA devices, 0 without a driver or GPU.");
  m.def("density", &bind::density, py::arg("sims"), py::arg("n"), py::arg("k"), py::arg("rho"),
        py::arg("density"), py::arg("workspace"), py::arg("bad"), py::arg("stream"), Release());
  m.def("select_pairs", &bind::select_pairs, py::arg("nbrs"), py::arg("density"), py::arg("n"),
        py::arg("k"), py::arg("max_per_node"), py::arg("dst_padded"), py::arg("bad"),
        py::arg("stream"), Release());
  m.def("train_pairs", &bind::train_pairs, py::arg("nbrs"), py::arg("labels"), py::arg("n"),
        py::arg("k"), py::arg("ranks"), py::arg("dst_padded"), py::arg("target_padded"),
        py::arg("bad"), py::arg("stream"), Release());
  m.def("gather", &bind::gather, py::arg("features"), py::arg("nbrs"), py::arg("node_ids"),
        py::arg("n"), py::arg("k"), py::arg("d"), py::arg("b"), py::arg("out"), py::arg("bad"),
        py::arg("stream"), Release());
  m.def("gather_add", &bind::gather_add, py::arg("a"), py::arg("bproj"), py::arg("nbrs"),
        py::arg("node_ids"), py::arg("bias"), py::arg("gelu"), py::arg("n"), py::arg("k"),
        py::arg("h"), py::arg("b"), py::arg("out"), py::arg("bad"), py::arg("stream"), Release());
  m.def("aggregate", &bind::aggregate, py::arg("weights"), py::arg("features"), py::arg("nbrs"),
        py::arg("node_ids"), py::arg("n"), py::arg("k"), py::arg("d"), py::arg("b"),
        py::arg("out"), py::arg("bad"), py::arg("stream"), Release());
  m.def("link_workspace_bytes", &bind::link_workspace_bytes, py::arg("num_nodes"),
        "Bytes of device scratch `link` needs for num_nodes nodes.");
  m.def("link", &bind::link, py::arg("src"), py::arg("dst"), py::arg("scores"),
        py::arg("threshold"), py::arg("num_edges"), py::arg("num_nodes"), py::arg("labels"),
        py::arg("workspace"), py::arg("workspace_bytes"), py::arg("bad"), py::arg("stream"),
        Release());
}
