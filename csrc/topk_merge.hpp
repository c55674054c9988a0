// Running top-m lists of the exact matching sweep (sae_fast/matching/exact.py): each tile of A @ B^T is folded
// into per-row and per-column lists of the m best scores seen so far, without sorting the tile. A list is
// sorted by (score desc, index asc); an entry enters only if it beats the list's last entry strictly, so among
// equal scores the lower index (an earlier tile, or an earlier entry of the tile) stays first. Tiles must be
// finite float32 (the inputs are checked unit rows). Memory: none besides the lists.
#pragma once

#include <cstdint>

namespace sae_fast {

// Rows: entry (r, j) of s (n, w) has index offset + j and folds into val/idx (n, m) row r. One row per task.
void topk_merge_rows(const float* s, std::int64_t n, std::int64_t w, float* val, std::int64_t* idx, std::int64_t m,
                     std::int64_t offset, int num_threads);

// Columns: entry (r, c) of s (n, w) has index offset + r and folds into val/idx (w, m) row c. Each task owns a
// block of columns and walks the tile's rows in order (reads stay contiguous).
void topk_merge_cols(const float* s, std::int64_t n, std::int64_t w, float* val, std::int64_t* idx, std::int64_t m,
                     std::int64_t offset, int num_threads);

}  // namespace sae_fast
