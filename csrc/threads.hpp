// The thread count every OpenMP loop of the extension uses: the caller's, or OpenMP's default when it passes 0.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sae_fast {

inline int threads_or_default(int num_threads) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
  return 1;
#endif
}

}  // namespace sae_fast
