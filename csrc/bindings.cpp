// Python bindings of the C++ core: module sae_fast._C. Inputs are checked in sae_fast/angles.py;
// here they are only required to be C-contiguous float64 / int64 arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "angles.hpp"
#include "sparse_rows.hpp"
#include "topk_merge.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using sae_fast::Index;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

namespace {

py::array_t<double> batch(const F64Array& a, const F64Array& b, int num_threads) {
  if (a.ndim() != 3 || b.ndim() != 3) throw std::invalid_argument("a and b must be 3-D (n, d, p) / (n, d, q)");
  const Index n = a.shape(0), d = a.shape(1), p = a.shape(2), q = b.shape(2);
  if (b.shape(0) != n || b.shape(1) != d) throw std::invalid_argument("a and b must share n and d");
  py::array_t<double> out({n, std::min(p, q)});
  const double* pa = a.data();
  const double* pb = b.data();
  double* po = out.mutable_data();
  {
    py::gil_scoped_release release;
    sae_fast::principal_angles_batch(pa, pb, n, d, p, q, po, num_threads);
  }
  return out;
}

py::array_t<double> pairs(const std::vector<F64Array>& bases, const I64Array& pair_idx, int num_threads) {
  if (bases.empty()) throw std::invalid_argument("bases must not be empty");
  if (pair_idx.ndim() != 2 || pair_idx.shape(1) != 2) throw std::invalid_argument("pairs must be (M, 2)");
  const Index d = bases[0].shape(0);
  std::vector<const double*> ptrs;
  std::vector<Index> cols;
  for (const auto& basis : bases) {
    if (basis.ndim() != 2 || basis.shape(0) != d) throw std::invalid_argument("every basis must be (d, r_i)");
    ptrs.push_back(basis.data());
    cols.push_back(basis.shape(1));
  }
  const Index num_pairs = pair_idx.shape(0);
  const std::int64_t* pp = pair_idx.data();
  Index width = 0;
  for (Index m = 0; m < num_pairs; ++m) {
    const auto ia = pp[2 * m], ib = pp[2 * m + 1];
    if (ia < 0 || ib < 0 || ia >= static_cast<Index>(bases.size()) || ib >= static_cast<Index>(bases.size()))
      throw std::out_of_range("pair index out of range");
    width = std::max(width, std::min(cols[ia], cols[ib]));
  }
  py::array_t<double> out({num_pairs, width});
  double* po = out.mutable_data();
  {
    py::gil_scoped_release release;
    sae_fast::principal_angles_pairs(ptrs, cols, d, pp, num_pairs, po, width, num_threads);
  }
  return out;
}

py::array_t<double> orthonormal(const F64Array& a) {
  if (a.ndim() != 2) throw std::invalid_argument("a must be 2-D (d, p)");
  using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  sae_fast::Mat q;
  {
    py::gil_scoped_release release;
    q = sae_fast::orthonormal_basis(Eigen::Map<const RowMat>(a.data(), a.shape(0), a.shape(1)));
  }
  py::array_t<double> out({static_cast<Index>(q.rows()), static_cast<Index>(q.cols())});
  Eigen::Map<RowMat>(out.mutable_data(), q.rows(), q.cols()) = q;
  return out;
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// The sparse training-step products (sparse_rows.hpp). sae_fast/sparse_rows.py passes C-contiguous torch
// tensors' numpy views of one float dtype and int64 indices, and the output to write into.
template <typename T>
using Arr = py::array_t<T, py::array::c_style>;
using Idx = py::array_t<std::int64_t, py::array::c_style>;

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

template <typename T>
void dot(const Arr<T>& dense, const Idx& indices, const Arr<T>& table, Arr<T>& out, int num_threads) {
  require(dense.ndim() == 2 && indices.ndim() == 2 && table.ndim() == 2 && out.ndim() == 2, "2-D arrays");
  const auto n = indices.shape(0), k = indices.shape(1), d = table.shape(1);
  require(dense.shape(0) == n && dense.shape(1) == d && out.shape(0) == n && out.shape(1) == k, "shapes");
  const T* pd = dense.data();
  const std::int64_t* pi = indices.data();
  const T* pt = table.data();
  T* po = out.mutable_data();
  py::gil_scoped_release release;
  sae_fast::sparse_dot<T>(pd, pi, pt, n, k, d, po, num_threads);
}

template <typename T>
void transpose(const Arr<T>& weights, const Idx& indices, const Arr<T>& dense, Arr<T>& out, py::object sums,
               int num_threads) {
  require(weights.ndim() == 2 && indices.ndim() == 2 && dense.ndim() == 2 && out.ndim() == 2, "2-D arrays");
  const auto n = weights.shape(0), k = weights.shape(1), d = dense.shape(1), f = out.shape(0);
  require(indices.shape(0) == n && indices.shape(1) == k && dense.shape(0) == n && out.shape(1) == d, "shapes");
  T* ps = nullptr;
  Arr<T> sums_arr;
  if (!sums.is_none()) {
    sums_arr = sums.cast<Arr<T>>();
    require(sums_arr.ndim() == 1 && sums_arr.shape(0) == f, "sums must be (F,)");
    ps = sums_arr.mutable_data();
  }
  const T* pw = weights.data();
  const std::int64_t* pi = indices.data();
  const T* pd = dense.data();
  T* po = out.mutable_data();
  py::gil_scoped_release release;
  sae_fast::sparse_transpose<T>(pw, pi, pd, n, k, d, f, po, ps, num_threads);
}

template <typename T>
void relu_topk(const Arr<T>& pre, py::object bias, Arr<T>& values, Idx& indices, int num_threads) {
  require(pre.ndim() == 2 && values.ndim() == 2 && indices.ndim() == 2, "2-D arrays");
  const auto n = pre.shape(0), f = pre.shape(1), k = values.shape(1);
  require(values.shape(0) == n && indices.shape(0) == n && indices.shape(1) == k && k <= f && k >= 1, "shapes");
  const T* pb = nullptr;
  Arr<T> bias_arr;
  if (!bias.is_none()) {
    bias_arr = bias.cast<Arr<T>>();
    require(bias_arr.ndim() == 1 && bias_arr.shape(0) == f, "bias must be (F,)");
    pb = bias_arr.data();
  }
  const T* pp = pre.data();
  T* pv = values.mutable_data();
  std::int64_t* pi = indices.mutable_data();
  py::gil_scoped_release release;
  sae_fast::relu_topk<T>(pp, pb, n, f, k, pv, pi, num_threads);
}

using F32Out = py::array_t<float, py::array::c_style>;
using I64Out = py::array_t<std::int64_t, py::array::c_style>;

// The tile s (n, w) float32 folded into the running lists val/idx: (n, m) by rows, (w, m) by columns.
void topk_merge(const py::array_t<float, py::array::c_style>& s, F32Out& val, I64Out& idx, std::int64_t offset,
                bool columns, int num_threads) {
  if (s.ndim() != 2 || val.ndim() != 2 || idx.ndim() != 2) throw std::invalid_argument("2-D arrays");
  const auto n = s.shape(0), w = s.shape(1), m = val.shape(1);
  const auto lists = columns ? w : n;
  if (val.shape(0) != lists || idx.shape(0) != lists || idx.shape(1) != m || m < 1)
    throw std::invalid_argument("val and idx must be (lists, m) with m >= 1");
  const float* ps = s.data();
  float* pv = val.mutable_data();
  std::int64_t* pi = idx.mutable_data();
  py::gil_scoped_release release;
  if (columns)
    sae_fast::topk_merge_cols(ps, n, w, pv, pi, m, offset, num_threads);
  else
    sae_fast::topk_merge_rows(ps, n, w, pv, pi, m, offset, num_threads);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sae_fast C++ core: principal angles between subspaces (Eigen, OpenMP); sparse training-step products.";
  m.def("principal_angles_batch", &batch, py::arg("a"), py::arg("b"), py::arg("num_threads") = 0,
        "Angles (n, min(p, q)) between span(a[i]) and span(b[i]); a (n, d, p), b (n, d, q) float64.");
  m.def("principal_angles_pairs", &pairs, py::arg("bases"), py::arg("pairs"), py::arg("num_threads") = 0,
        "Angles (M, width) for every pair of bases; each basis orthonormalised once; NaN-padded rows.");
  m.def("orthonormal_basis", &orthonormal, py::arg("a"),
        "Orthonormal basis (d, rank) of span(a), a (d, p) float64; rank cut-off max(d, p) * eps * s_max.");
  m.def("sparse_dot", &dot<float>, py::arg("dense"), py::arg("indices"), py::arg("table"), py::arg("out"),
        py::arg("num_threads") = 0, "out[n, j] = <dense[n], table[indices[n, j]]>.");
  m.def("sparse_dot", &dot<double>, py::arg("dense"), py::arg("indices"), py::arg("table"), py::arg("out"),
        py::arg("num_threads") = 0);
  m.def("sparse_transpose", &transpose<float>, py::arg("weights"), py::arg("indices"), py::arg("dense"),
        py::arg("out"), py::arg("sums") = py::none(), py::arg("num_threads") = 0,
        "out[f] = sum over pairs with indices[n, j] = f of weights[n, j] dense[n]; sums[f] = their weights' sum.");
  m.def("sparse_transpose", &transpose<double>, py::arg("weights"), py::arg("indices"), py::arg("dense"),
        py::arg("out"), py::arg("sums") = py::none(), py::arg("num_threads") = 0);
  m.def("relu_topk", &relu_topk<float>, py::arg("pre"), py::arg("bias"), py::arg("values"), py::arg("indices"),
        py::arg("num_threads") = 0, "Row-wise top-k of relu(pre + bias), (value desc, latent asc), NaN first.");
  m.def("relu_topk", &relu_topk<double>, py::arg("pre"), py::arg("bias"), py::arg("values"), py::arg("indices"),
        py::arg("num_threads") = 0);
  m.def("topk_merge", &topk_merge, py::arg("s"), py::arg("val"), py::arg("idx"), py::arg("offset"),
        py::arg("columns"), py::arg("num_threads") = 0,
        "Folds a float32 score tile into running top-m lists (rows, or columns), in place (csrc/topk_merge.hpp).");
  m.def("max_threads", &max_threads, "Threads the extension uses by default (OpenMP).");
}
