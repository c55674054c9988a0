#include "angles.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sae_fast {
namespace {

using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMap = Eigen::Map<const RowMat>;
constexpr double kHalfPi = 1.57079632679489661923;

// Dot product with four independent partial sums (instruction-level parallelism without -ffast-math).
inline double dot4(const double* __restrict x, const double* __restrict y, Index n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  Index k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += x[k] * y[k];
    s1 += x[k + 1] * y[k + 1];
    s2 += x[k + 2] * y[k + 2];
    s3 += x[k + 3] * y[k + 3];
  }
  for (; k < n; ++k) s0 += x[k] * y[k];
  return (s0 + s1) + (s2 + s3);
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
    for (Index i = 0; i < n; ++i) norms2[i] = dot4(a.col(i).data(), a.col(i).data(), rows);
    bool rotated = false;
    for (Index i = 0; i + 1 < n; ++i) {
      double* __restrict ci = a.col(i).data();
      for (Index j = i + 1; j < n; ++j) {
        double* __restrict cj = a.col(j).data();
        const double gamma = dot4(ci, cj, rows);
        const double alpha = norms2[i], beta = norms2[j];
        if (std::abs(gamma) <= eps * std::sqrt(alpha * beta)) continue;
        rotated = true;
        const double zeta = (beta - alpha) / (2.0 * gamma);
        // tan of the rotation angle, the smaller root; for huge |zeta|, 1 / (2 zeta) avoids overflow
        const double az = std::abs(zeta);
        const double t = (zeta >= 0 ? 1.0 : -1.0) / (az < 1e150 ? az + std::sqrt(1.0 + az * az) : 2.0 * az);
        const double c = 1.0 / std::sqrt(1.0 + t * t), s = c * t;
        for (Index k = 0; k < rows; ++k) {
          const double x = ci[k], y = cj[k];
          ci[k] = c * x - s * y;
          cj[k] = s * x + c * y;
        }
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

int resolve_threads(int num_threads) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
  return 1;
#endif
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

  const Mat c = qa.transpose() * qb;  // (ra, rb)
  const Eigen::VectorXd cosines = singular_values(c);  // descending: ascending angles
  for (Index i = 0; i < m; ++i) out[i] = std::acos(std::clamp(cosines(i), 0.0, 1.0));
  // Angles below 45 degrees come from the sines, the singular values of the residual qb - qa qa^T qb:
  // the i-th largest cosine pairs with the i-th smallest sine. Skipped when every angle is above 45.
  const Index rb = qb.cols();
  if (cosines(0) * cosines(0) >= 0.5) {
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
  parallel_for(n, resolve_threads(num_threads), [&](Index i) {
    const Mat qa = orthonormal_basis(RowMap(a + i * d * p, d, p));
    const Mat qb = orthonormal_basis(RowMap(b + i * d * q, d, q));
    angles_between(qa, qb, out + i * width, width);
  });
}

void principal_angles_pairs(const std::vector<const double*>& bases, const std::vector<Index>& ranks,
                            Index d, const std::int64_t* pairs, Index num_pairs, double* out, Index width,
                            int num_threads) {
  const int threads = resolve_threads(num_threads);
  const Index num_bases = static_cast<Index>(bases.size());
  std::vector<Mat> ortho(num_bases);
  parallel_for(num_bases, threads, [&](Index i) { ortho[i] = orthonormal_basis(RowMap(bases[i], d, ranks[i])); });
  parallel_for(num_pairs, threads, [&](Index m) {
    const std::int64_t ia = pairs[2 * m], ib = pairs[2 * m + 1];
    if (ia < 0 || ib < 0 || ia >= num_bases || ib >= num_bases) throw std::out_of_range("pair index out of range");
    double* row = out + m * width;
    const Index valid = std::min(ranks[ia], ranks[ib]);
    angles_between(ortho[ia], ortho[ib], row, valid);
    for (Index j = valid; j < width; ++j) row[j] = std::numeric_limits<double>::quiet_NaN();
  });
}

}  // namespace sae_fast
