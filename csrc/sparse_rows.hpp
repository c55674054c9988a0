// Row-sparse products of a TopK SAE's training step on the CPU: every (row, latent) pair of a top-k code is
// touched once, never a dense (N x F) matrix. Each output row is written by one thread in a fixed order, so
// results are bit-identical between runs and thread counts. Indices must lie in [0, F): the caller checks.
#pragma once

#include <cstdint>

namespace sae_fast {

// out[n, j] = <dense[n], table[indices[n, j]]>; dense (N, d); indices (N, k); table (F, d); out (N, k).
template <typename T>
void sparse_dot(const T* dense, const std::int64_t* indices, const T* table, std::int64_t n, std::int64_t k,
                std::int64_t d, T* out, int num_threads);

// out[f] = sum over pairs (n, j) with indices[n, j] = f of weights[n, j] * dense[n], in ascending (n, j) order;
// out (F, d), every row written (zero for a latent without pairs). With out_sums non-null also
// out_sums[f] = sum of those weights (the bias gradient). Memory: O(N k + F) int64 besides the output.
template <typename T>
void sparse_transpose(const T* weights, const std::int64_t* indices, const T* dense, std::int64_t n,
                      std::int64_t k, std::int64_t d, std::int64_t num_latents, T* out, T* out_sums,
                      int num_threads);

}  // namespace sae_fast

namespace sae_fast {

// Row-wise top-k of relu(pre[r] + bias) in (value desc, latent asc) order, NaN above every number (so a NaN
// weight is seen by the caller's finiteness check): pre (N, F) the bias-free GEMM result, bias (F,) or null.
// Rows with fewer than k positive values are completed with ReLU zeros at the lowest such latents. One row per
// task, a k-slot heap per row; a value only enters if it beats the heap's worst, so most of the row costs one
// comparison (AVX2: 8 at a time for float). values, indices: (N, k). Memory: O(k) per thread.
template <typename T>
void relu_topk(const T* pre, const T* bias, std::int64_t n, std::int64_t num_latents, std::int64_t k, T* values,
               std::int64_t* indices, int num_threads);

}  // namespace sae_fast
