#include "sparse_rows.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <limits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "threads.hpp"

namespace sae_fast {
namespace {

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


namespace {

// The selection order: NaN first, then larger values, then lower latents.
template <typename T>
inline bool better(T a, std::int64_t ia, T b, std::int64_t ib) {
  const bool na = std::isnan(a), nb = std::isnan(b);
  if (na != nb) return na;
  if (!na && a != b) return a > b;
  return ia < ib;
}

// A k-slot heap whose root is the worst kept entry (under `better`).
template <typename T>
struct WorstHeap {
  std::vector<T> v;
  std::vector<std::int64_t> i;
  std::int64_t size = 0;

  explicit WorstHeap(std::int64_t k) : v(k), i(k) {}

  bool worse(std::int64_t a, std::int64_t b) const { return better(v[b], i[b], v[a], i[a]); }

  void sift_down(std::int64_t p) {
    for (;;) {
      std::int64_t c = 2 * p + 1;
      if (c >= size) return;
      if (c + 1 < size && worse(c + 1, c)) ++c;
      if (!worse(c, p)) return;
      std::swap(v[c], v[p]);
      std::swap(i[c], i[p]);
      p = c;
    }
  }

  void push(T value, std::int64_t index) {
    std::int64_t c = size++;
    v[c] = value;
    i[c] = index;
    while (c > 0) {
      const std::int64_t p = (c - 1) / 2;
      if (!worse(c, p)) return;
      std::swap(v[c], v[p]);
      std::swap(i[c], i[p]);
      c = p;
    }
  }

  void replace_root(T value, std::int64_t index) {
    v[0] = value;
    i[0] = index;
    sift_down(0);
  }
};

// Offers latent j (value x) to the heap; returns the new entry threshold (values <= it cannot enter).
template <typename T>
inline T offer(WorstHeap<T>& heap, std::int64_t k, T x, std::int64_t j) {
  if (heap.size < k) {
    if (x > T(0) || std::isnan(x)) heap.push(x, j);
  } else if (better(x, j, heap.v[0], heap.i[0])) {
    heap.replace_root(x, j);
  }
  return heap.size < k ? T(0) : heap.v[0];
}

template <typename T>
void relu_topk_row(const T* pre, const T* bias, std::int64_t f, std::int64_t k, WorstHeap<T>& heap, T* values,
                   std::int64_t* indices) {
  heap.size = 0;
  T threshold = T(0);
  std::int64_t j = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    for (; j + 8 <= f; j += 8) {
      __m256 x = _mm256_loadu_ps(pre + j);
      if (bias != nullptr) x = _mm256_add_ps(x, _mm256_loadu_ps(bias + j));
      // not (x <= threshold): larger, or NaN on either side
      const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(threshold), _CMP_NLE_UQ));
      if (mask == 0) continue;
      alignas(32) float lane[8];
      _mm256_store_ps(lane, x);
      for (int t = 0; t < 8; ++t)
        if (mask & (1 << t)) threshold = offer(heap, k, lane[t], j + t);
    }
  }
#endif
  for (; j < f; ++j) {
    const T x = bias != nullptr ? pre[j] + bias[j] : pre[j];
    if (!(x <= threshold)) threshold = offer(heap, k, x, j);
  }
  std::int64_t count = heap.size;
  std::vector<std::int64_t> order(count);
  for (std::int64_t q = 0; q < count; ++q) order[q] = q;
  std::sort(order.begin(), order.end(),
            [&](std::int64_t a, std::int64_t b) { return better(heap.v[a], heap.i[a], heap.v[b], heap.i[b]); });
  for (std::int64_t q = 0; q < count; ++q) {
    values[q] = heap.v[order[q]];
    indices[q] = heap.i[order[q]];
  }
  // fewer than k positive (or NaN) values: ReLU zeros at the lowest latents whose value is not positive
  for (std::int64_t c = 0; count < k && c < f; ++c) {
    const T x = bias != nullptr ? pre[c] + bias[c] : pre[c];
    if (x > T(0) || std::isnan(x)) continue;
    values[count] = T(0);
    indices[count++] = c;
  }
}

}  // namespace

template <typename T>
void relu_topk(const T* pre, const T* bias, std::int64_t n, std::int64_t num_latents, std::int64_t k, T* values,
               std::int64_t* indices, int num_threads) {
  const int threads = threads_or_default(num_threads);
#pragma omp parallel num_threads(threads)
  {
    WorstHeap<T> heap(k);
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < n; ++r)
      relu_topk_row(pre + r * num_latents, bias, num_latents, k, heap, values + r * k, indices + r * k);
  }
}

#define SAE_FAST_INSTANTIATE(T)                                                                             \
  template void sparse_dot<T>(const T*, const std::int64_t*, const T*, std::int64_t, std::int64_t,          \
                              std::int64_t, T*, int);                                                       \
  template void sparse_transpose<T>(const T*, const std::int64_t*, const T*, std::int64_t, std::int64_t,    \
                                    std::int64_t, std::int64_t, T*, T*, int);                               \
  template void relu_topk<T>(const T*, const T*, std::int64_t, std::int64_t, std::int64_t, T*, std::int64_t*, int);
SAE_FAST_INSTANTIATE(float)
SAE_FAST_INSTANTIATE(double)
#undef SAE_FAST_INSTANTIATE

}  // namespace sae_fast
