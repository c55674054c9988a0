// Principal angles between subspaces (Knyazev & Argentati 2002), accurate for tiny and large angles alike.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <vector>

namespace sae_fast {

using Mat = Eigen::MatrixXd;
using Index = Eigen::Index;

// Orthonormal basis (d x rank) of span(a), a of shape (d x p).
// Rank cut-off: singular values (or column-pivoted QR pivots) at or below max(d, p) * eps * largest
// count as zero, the rule of numpy.linalg.matrix_rank. A zero matrix has rank 0 (a d x 0 result).
Mat orthonormal_basis(const Eigen::Ref<const Mat>& a);

// Angles in radians between span(qa) and span(qb), both with orthonormal columns, ascending, written to
// out[0 .. width). The first min(cols(qa), cols(qb)) are the principal angles; any remaining slots
// (a basis whose rank fell below its declared width) are pi/2.
void angles_between(const Mat& qa, const Mat& qb, double* out, Index width);

// Batched: a is (n, d, p), b is (n, d, q), both C-contiguous float64; out is (n, min(p, q)).
void principal_angles_batch(const double* a, const double* b, Index n, Index d, Index p, Index q,
                            double* out, int num_threads);

// Every pair (pairs[2m], pairs[2m+1]) of the given bases (each d x cols[i], C-contiguous float64); each basis
// is orthonormalised once. out is (M, width) and row m holds min(cols[a], cols[b]) angles then NaN. Pair
// indices must lie in [0, bases.size()): the caller (the bindings) checks them.
void principal_angles_pairs(const std::vector<const double*>& bases, const std::vector<Index>& cols,
                            Index d, const std::int64_t* pairs, Index num_pairs, double* out, Index width,
                            int num_threads);

}  // namespace sae_fast
