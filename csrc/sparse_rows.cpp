#include "sparse_rows.hpp"

#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sae_fast {
namespace {

int threads_or_default(int num_threads) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
  return 1;
#endif
}

// acc[0..d) += w * row[0..d) (the compiler vectorises this loop with -O3).
template <typename T>
inline void axpy(T w, const T* __restrict row, T* __restrict acc, std::int64_t d) {
  for (std::int64_t c = 0; c < d; ++c) acc[c] += w * row[c];
}

}  // namespace

template <typename T>
void sparse_dot(const T* dense, const std::int64_t* indices, const T* table, std::int64_t n, std::int64_t k,
                std::int64_t d, T* out, int num_threads) {
  const int threads = threads_or_default(num_threads);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t r = 0; r < n; ++r) {
    const T* __restrict a = dense + r * d;
    for (std::int64_t j = 0; j < k; ++j) {
      const T* __restrict b = table + indices[r * k + j] * d;
      T s = T(0);
#pragma omp simd reduction(+ : s)
      for (std::int64_t c = 0; c < d; ++c) s += a[c] * b[c];
      out[r * k + j] = s;
    }
  }
}

template <typename T>
void sparse_transpose(const T* weights, const std::int64_t* indices, const T* dense, std::int64_t n,
                      std::int64_t k, std::int64_t d, std::int64_t num_latents, T* out, T* out_sums,
                      int num_threads) {
  // Counting sort of the pairs by latent (stable: ascending (n, j) within a latent), then one latent per task.
  const std::int64_t pairs = n * k;
  std::vector<std::int64_t> start(num_latents + 1, 0);
  for (std::int64_t p = 0; p < pairs; ++p) ++start[indices[p] + 1];
  for (std::int64_t f = 0; f < num_latents; ++f) start[f + 1] += start[f];
  std::vector<std::int64_t> order(pairs);
  {
    std::vector<std::int64_t> fill(start.begin(), start.end() - 1);
    for (std::int64_t p = 0; p < pairs; ++p) order[fill[indices[p]]++] = p;
  }
  const int threads = threads_or_default(num_threads);
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
  for (std::int64_t f = 0; f < num_latents; ++f) {
    T* acc = out + f * d;
    for (std::int64_t c = 0; c < d; ++c) acc[c] = T(0);
    T sum = T(0);
    for (std::int64_t q = start[f]; q < start[f + 1]; ++q) {
      const std::int64_t p = order[q];
      axpy(weights[p], dense + (p / k) * d, acc, d);
      sum += weights[p];
    }
    if (out_sums != nullptr) out_sums[f] = sum;
  }
}

#define SAE_FAST_INSTANTIATE(T)                                                                             \
  template void sparse_dot<T>(const T*, const std::int64_t*, const T*, std::int64_t, std::int64_t,          \
                              std::int64_t, T*, int);                                                       \
  template void sparse_transpose<T>(const T*, const std::int64_t*, const T*, std::int64_t, std::int64_t,    \
                                    std::int64_t, std::int64_t, T*, T*, int);
SAE_FAST_INSTANTIATE(float)
SAE_FAST_INSTANTIATE(double)
#undef SAE_FAST_INSTANTIATE

}  // namespace sae_fast
