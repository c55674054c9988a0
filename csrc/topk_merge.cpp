#include "topk_merge.hpp"

#include <algorithm>

#include "threads.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace sae_fast {
namespace {

// Inserts (x, j) into the sorted list (x beats its last entry); returns the new last score (the entry threshold).
inline float insert(float* v, std::int64_t* i, std::int64_t m, float x, std::int64_t j) {
  std::int64_t p = m - 1;
  while (p > 0 && v[p - 1] < x) {  // strict: equal scores already listed keep their place ahead
    v[p] = v[p - 1];
    i[p] = i[p - 1];
    --p;
  }
  v[p] = x;
  i[p] = j;
  return v[m - 1];
}

void merge_row(const float* s, std::int64_t w, float* v, std::int64_t* i, std::int64_t m, std::int64_t offset) {
  float threshold = v[m - 1];
  std::int64_t j = 0;
#if defined(__AVX2__)
  for (; j + 8 <= w; j += 8) {
    const __m256 x = _mm256_loadu_ps(s + j);
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(threshold), _CMP_GT_OQ));
    if (mask == 0) continue;
    for (int t = 0; t < 8; ++t)
      if ((mask & (1 << t)) && s[j + t] > threshold) threshold = insert(v, i, m, s[j + t], offset + j + t);
  }
#endif
  for (; j < w; ++j)
    if (s[j] > threshold) threshold = insert(v, i, m, s[j], offset + j);
}

}  // namespace

void topk_merge_rows(const float* s, std::int64_t n, std::int64_t w, float* val, std::int64_t* idx, std::int64_t m,
                     std::int64_t offset, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(threads_or_default(num_threads))
  for (std::int64_t r = 0; r < n; ++r) merge_row(s + r * w, w, val + r * m, idx + r * m, m, offset);
}

void topk_merge_cols(const float* s, std::int64_t n, std::int64_t w, float* val, std::int64_t* idx, std::int64_t m,
                     std::int64_t offset, int num_threads) {
  constexpr std::int64_t kBlock = 256;  // columns per task: thresholds + one row's slice stay in L1
  const std::int64_t blocks = (w + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) num_threads(threads_or_default(num_threads))
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t c0 = b * kBlock, c1 = std::min(w, c0 + kBlock);
    alignas(32) float threshold[kBlock];
    for (std::int64_t c = c0; c < c1; ++c) threshold[c - c0] = val[c * m + m - 1];
    for (std::int64_t r = 0; r < n; ++r) {
      const float* row = s + r * w;
      std::int64_t c = c0;
#if defined(__AVX2__)
      for (; c + 8 <= c1; c += 8) {
        const __m256 x = _mm256_loadu_ps(row + c);
        const __m256 t = _mm256_load_ps(threshold + (c - c0));
        const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, t, _CMP_GT_OQ));
        if (mask == 0) continue;
        for (int q = 0; q < 8; ++q)
          if (mask & (1 << q)) threshold[c + q - c0] = insert(val + (c + q) * m, idx + (c + q) * m, m, row[c + q], offset + r);
      }
#endif
      for (; c < c1; ++c)
        if (row[c] > threshold[c - c0]) threshold[c - c0] = insert(val + c * m, idx + c * m, m, row[c], offset + r);
    }
  }
}

}  // namespace sae_fast
