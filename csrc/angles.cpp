#include "angles.hpp"
#include "threads.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sae_fast {
namespace {

using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMap = Eigen::Map<const RowMat>;
constexpr double kHalfPi = 1.57079632679489661923;
constexpr double kSineBranchBelow = 0.05;  // radians

using v4d = double __attribute__((vector_size(32)));  // 4 doubles: AVX2 registers where enabled

inline v4d load4(const double* x) {
  v4d v;
  std::memcpy(&v, x, sizeof(v));
  return v;
}

inline void store4(double* x, v4d v) { std::memcpy(x, &v, sizeof(v)); }

inline double hsum(v4d v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// Dot product of two length-n arrays, 4-wide.
inline double dot(const double* __restrict x, const double* __restrict y, Index n) {
  v4d acc = {0, 0, 0, 0};
  Index k = 0;
  for (; k + 4 <= n; k += 4) acc += load4(x + k) * load4(y + k);
  double s = hsum(acc);
  for (; k < n; ++k) s += x[k] * y[k];
  return s;
}

// (x, y) <- (c x - s y, s x + c y), 4-wide.
inline void rotate(double* __restrict x, double* __restrict y, Index n, double c, double s) {
  const v4d cv = {c, c, c, c}, sv = {s, s, s, s};
  Index k = 0;
  for (; k + 4 <= n; k += 4) {
    const v4d xv = load4(x + k), yv = load4(y + k);
    store4(x + k, cv * xv - sv * yv);
    store4(y + k, sv * xv + cv * yv);
  }
  for (; k < n; ++k) {
    const double xk = x[k], yk = y[k];
    x[k] = c * xk - s * yk;
    y[k] = s * xk + c * yk;
  }
}

// C = A^T B for column-major A (n x p) and B (n x q), written column-major to c (p x q). The shapes here are
// skinny (n = d in the thousands, p, q small), where a general GEMM spends much of its time packing:
// 2 x 4 blocks of columns are reduced in one pass over n with 8 vector accumulators instead.
Mat gram_product(const Mat& a, const Mat& b) {
  const Index n = a.rows(), p = a.cols(), q = b.cols();
  Mat c(p, q);
  const Index n4 = n - n % 4;
  auto tail = [&](Index i, Index j) {
    double s = 0;
    for (Index k = n4; k < n; ++k) s += a(k, i) * b(k, j);
    return s;
  };
  Index i = 0;
  for (; i + 2 <= p; i += 2) {
    const double* a0 = a.col(i).data();
    const double* a1 = a.col(i + 1).data();
    Index j = 0;
    for (; j + 4 <= q; j += 4) {
      const double* b0 = b.col(j).data();
      const double* b1 = b.col(j + 1).data();
      const double* b2 = b.col(j + 2).data();
      const double* b3 = b.col(j + 3).data();
      v4d s00 = {0, 0, 0, 0}, s01 = s00, s02 = s00, s03 = s00, s10 = s00, s11 = s00, s12 = s00, s13 = s00;
      for (Index k = 0; k < n4; k += 4) {
        const v4d x0 = load4(a0 + k), x1 = load4(a1 + k);
        const v4d y0 = load4(b0 + k), y1 = load4(b1 + k), y2 = load4(b2 + k), y3 = load4(b3 + k);
        s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3;
        s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3;
      }
      c(i, j) = hsum(s00) + tail(i, j);
      c(i, j + 1) = hsum(s01) + tail(i, j + 1);
      c(i, j + 2) = hsum(s02) + tail(i, j + 2);
      c(i, j + 3) = hsum(s03) + tail(i, j + 3);
      c(i + 1, j) = hsum(s10) + tail(i + 1, j);
      c(i + 1, j + 1) = hsum(s11) + tail(i + 1, j + 1);
      c(i + 1, j + 2) = hsum(s12) + tail(i + 1, j + 2);
      c(i + 1, j + 3) = hsum(s13) + tail(i + 1, j + 3);
    }
    for (; j < q; ++j) {
      c(i, j) = a.col(i).dot(b.col(j));
      c(i + 1, j) = a.col(i + 1).dot(b.col(j));
    }
  }
  for (; i < p; ++i) c.row(i) = a.col(i).transpose() * b;
  return c;
}

// Singular values, descending, of a (rows >= cols) by one-sided Jacobi (Hestenes): high relative accuracy,
// and for the small factors used here several times cheaper than Eigen's two-sided JacobiSVD. Squared
// column norms are cached within a sweep (they only steer the rotations); the returned values are the
// freshly computed column norms.
Eigen::VectorXd jacobi_singular_values(Mat a) {
  const Index n = a.cols(), rows = a.rows();
  const double eps = std::numeric_limits<double>::epsilon();
  std::vector<double> norms2(n);
  for (int sweep = 0; sweep < 80; ++sweep) {
    for (Index i = 0; i < n; ++i) norms2[i] = dot(a.col(i).data(), a.col(i).data(), rows);
    bool rotated = false;
    for (Index i = 0; i + 1 < n; ++i) {
      double* __restrict ci = a.col(i).data();
      for (Index j = i + 1; j < n; ++j) {
        double* __restrict cj = a.col(j).data();
        const double gamma = dot(ci, cj, rows);
        const double alpha = norms2[i], beta = norms2[j];
        if (std::abs(gamma) <= eps * std::sqrt(alpha * beta)) continue;
        rotated = true;
        const double zeta = (beta - alpha) / (2.0 * gamma);
        // tan of the rotation angle, the smaller root; for huge |zeta|, 1 / (2 zeta) avoids overflow
        const double az = std::abs(zeta);
        const double t = (zeta >= 0 ? 1.0 : -1.0) / (az < 1e150 ? az + std::sqrt(1.0 + az * az) : 2.0 * az);
        const double c = 1.0 / std::sqrt(1.0 + t * t), s = c * t;
        rotate(ci, cj, rows, c, s);
        norms2[i] = alpha - t * gamma;
        norms2[j] = beta + t * gamma;
      }
    }
    if (!rotated) break;
  }
  Eigen::VectorXd values = a.colwise().norm().transpose();
  std::sort(values.data(), values.data() + values.size(), std::greater<double>());
  return values;
}

Eigen::VectorXd singular_values(const Mat& m) {
  if (m.cols() <= 64 && m.rows() >= m.cols()) return jacobi_singular_values(m);
  return Eigen::BDCSVD<Mat>(m).singularValues();
}

// Runs body(i) for i in [0, n) on num_threads threads; the first exception is rethrown afterwards.
template <typename Body>
void parallel_for(Index n, int num_threads, Body body) {
  std::exception_ptr error = nullptr;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic) num_threads(num_threads)
#endif
  for (Index i = 0; i < n; ++i) {
    try {
      body(i);
    } catch (...) {
#ifdef _OPENMP
#pragma omp critical
#endif
      if (!error) error = std::current_exception();
    }
  }
  (void)num_threads;
  if (error) std::rethrow_exception(error);
}

}  // namespace

Mat orthonormal_basis(const Eigen::Ref<const Mat>& a) {
  const Index d = a.rows(), p = a.cols();
  const double tol = static_cast<double>(std::max(d, p)) * std::numeric_limits<double>::epsilon();
  if (p == 0 || d == 0) return Mat(d, 0);
  Eigen::ColPivHouseholderQR<Mat> qr(a);
  qr.setThreshold(tol);
  if (qr.rank() == p && qr.maxPivot() > 0) {
    return qr.householderQ() * Mat::Identity(d, p);
  }
  // Rank-deficient (or nearly): the SVD decides the rank and gives the basis.
  Eigen::BDCSVD<Mat> svd(a, Eigen::ComputeThinU);
  const Eigen::VectorXd& s = svd.singularValues();
  if (s.size() == 0 || !(s(0) > 0)) return Mat(d, 0);
  Index rank = 0;
  while (rank < s.size() && s(rank) > tol * s(0)) ++rank;
  return svd.matrixU().leftCols(rank);
}

void angles_between(const Mat& qa_in, const Mat& qb_in, double* out, Index width) {
  for (Index i = 0; i < width; ++i) out[i] = kHalfPi;
  // Work with the smaller subspace as qb, so that its residual carries one sine per angle.
  const bool swap = qb_in.cols() > qa_in.cols();
  const Mat& qa = swap ? qb_in : qa_in;
  const Mat& qb = swap ? qa_in : qb_in;
  const Index m = std::min<Index>(qb.cols(), width);
  if (m == 0) return;

  // qa^T qb, (ra, rb): the packing-free kernel for the skinny products it is made for, Eigen's GEMM above
  const Mat c = qa.cols() * qb.cols() <= 64 * 64 ? gram_product(qa, qb) : Mat(qa.transpose() * qb);
  const Eigen::VectorXd cosines = singular_values(c);  // descending: ascending angles
  for (Index i = 0; i < m; ++i) out[i] = std::acos(std::clamp(cosines(i), 0.0, 1.0));
  // acos(cos) is accurate to ~eps / sin(theta): below kSineBranchBelow radians (error up to ~1e-13 there)
  // the angle must come from its sine instead, the singular values of the residual qb - qa qa^T qb; the
  // i-th largest cosine pairs with the i-th smallest sine, and sines are used for every angle below 45
  // degrees. The residual costs more than the rest together, so it is formed only when needed.
  const Index rb = qb.cols();
  if (out[0] < kSineBranchBelow) {
    const Mat residual = qb - qa * c;
    // Singular values of the tall residual: QR first, then the small triangular factor.
    Eigen::HouseholderQR<Mat> rqr(residual);
    const Mat r = rqr.matrixQR().topRows(rb).triangularView<Eigen::Upper>();
    const Eigen::VectorXd sines = singular_values(r);  // descending: descending angles
    for (Index i = 0; i < m && cosines(i) * cosines(i) >= 0.5; ++i) {
      out[i] = std::asin(std::clamp(sines(rb - 1 - i), 0.0, 1.0));
    }
  }
  std::sort(out, out + m);
}

void principal_angles_batch(const double* a, const double* b, Index n, Index d, Index p, Index q,
                            double* out, int num_threads) {
  const Index width = std::min(p, q);
  parallel_for(n, threads_or_default(num_threads), [&](Index i) {
    const Mat qa = orthonormal_basis(RowMap(a + i * d * p, d, p));
    const Mat qb = orthonormal_basis(RowMap(b + i * d * q, d, q));
    angles_between(qa, qb, out + i * width, width);
  });
}

void principal_angles_pairs(const std::vector<const double*>& bases, const std::vector<Index>& cols,
                            Index d, const std::int64_t* pairs, Index num_pairs, double* out, Index width,
                            int num_threads) {
  const int threads = threads_or_default(num_threads);
  const Index num_bases = static_cast<Index>(bases.size());
  std::vector<Mat> ortho(num_bases);
  parallel_for(num_bases, threads, [&](Index i) { ortho[i] = orthonormal_basis(RowMap(bases[i], d, cols[i])); });
  parallel_for(num_pairs, threads, [&](Index m) {
    const std::int64_t ia = pairs[2 * m], ib = pairs[2 * m + 1];
    double* row = out + m * width;
    const Index valid = std::min(cols[ia], cols[ib]);
    angles_between(ortho[ia], ortho[ib], row, valid);
    for (Index j = valid; j < width; ++j) row[j] = std::numeric_limits<double>::quiet_NaN();
  });
}

}  // namespace sae_fast
