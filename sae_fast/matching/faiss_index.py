"""The faiss backend: an inner-product index over one dictionary's unit rows, built once, searched many times."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from .rows import ArrayLike, as_unit_rows

INDEX_KINDS = ("flat", "ivf", "ivf_sq", "hnsw", "cagra")
APPROXIMATE_KINDS = ("ivf", "ivf_sq", "hnsw", "cagra")


def import_faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("backend='faiss' needs faiss: pip install 'sae_fast[faiss]' (faiss-cpu)") from err
    return faiss


def faiss_available() -> bool:
    """True when the module ``faiss`` can be imported."""
    try:
        import_faiss()
    except ImportError:
        return False
    return True


def faiss_has_gpu() -> bool:
    """True when the installed faiss is a GPU build and sees at least one GPU."""
    if not faiss_available():
        return False
    faiss = import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def faiss_has_cagra() -> bool:
    """True when the installed faiss is a GPU build with cuVS (``GpuIndexCagra``) and sees a GPU."""
    return faiss_has_gpu() and hasattr(import_faiss(), "GpuIndexCagra")


def default_nlist(n: int) -> int:
    """IVF list count: about 4 sqrt(n), a power of two, with at least 39 training points per list."""
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return max(1, min(nlist, n // 39))


class FaissIndex:
    """A faiss inner-product index over the unit-normalised rows of one dictionary (F, d).

    Build it once and search it with many query dictionaries.

    Parameters
    ----------
    x:
        The dictionary (F, d), numpy or torch; its unit rows are kept (float32, CPU) to re-score results.
    kind:
        ``flat`` (exact IndexFlatIP), ``ivf`` (IndexIVFFlat), ``ivf_sq`` (IVF, fp16 scalar quantiser), ``hnsw``
        (IndexHNSWFlat, CPU only), ``cagra`` (GpuIndexCagra: GPU faiss with cuVS only, see :func:`faiss_has_cagra`).
    nlist, nprobe:
        IVF lists (default ``default_nlist(F)``) and lists searched per query (default max(1, nlist / 64)).
    hnsw_m, ef_construction, ef_search:
        HNSW graph degree and search breadths.
    graph_degree, itopk_size:
        CAGRA graph degree and search breadth.
    use_gpu:
        None: on the GPU when a GPU faiss is installed and a GPU is visible.
    threads:
        OpenMP threads for faiss on CPU (None: faiss's default).
    seed:
        Seed of the IVF k-means.

    Memory: the unit rows (F d float32) plus the index (about as much again for flat / IVF, half for
    ``ivf_sq``'s codes, plus the graph for HNSW / CAGRA).
    """

    def __init__(
        self,
        x: ArrayLike,
        kind: str = "flat",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        graph_degree: int = 32,
        itopk_size: int = 64,
        use_gpu: bool | None = None,
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
        faiss = import_faiss()
        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        self.rows = as_unit_rows("x", x, device="cpu")
        xn = np.ascontiguousarray(self.rows.numpy())
        n, d = xn.shape
        self.kind, self.d, self.n = kind, d, n
        t0 = time.perf_counter()
        self._keep: list[Any] = []  # objects faiss indexes refer to
        self._search_params: Any = None
        if kind == "cagra":
            index, desc = self._cagra(faiss, d, use_gpu, graph_degree, itopk_size)
            use_gpu = False  # already on the GPU: no index_cpu_to_gpu below
            on_gpu = True
        else:
            index, desc, nprobe = self._cpu_index(faiss, kind, d, n, nlist, nprobe, hnsw_m, ef_construction,
                                                  ef_search, seed)
            if use_gpu is None:
                use_gpu = faiss_has_gpu() and kind != "hnsw"
            on_gpu = bool(use_gpu)
        if use_gpu:
            index = self._to_gpu(faiss, index)
        if kind in ("ivf", "ivf_sq", "cagra"):
            index.train(xn)  # CAGRA builds its graph here; its add() throws in some faiss versions
        if kind != "cagra":
            index.add(xn)
        self.nprobe = nprobe
        if nprobe is not None:
            self.set_nprobe(nprobe, index)
        self.index = index
        self.build_seconds = time.perf_counter() - t0
        self.description = f"faiss {desc} on {'gpu' if on_gpu else 'cpu'}"

    def _cagra(self, faiss: Any, d: int, use_gpu: bool | None, graph_degree: int, itopk_size: int) -> tuple[Any, str]:
        """An untrained GpuIndexCagra and its description; ValueError when this faiss has no cuVS or no GPU."""
        if use_gpu is False or not faiss_has_cagra():
            raise ValueError("index kind 'cagra' needs a GPU faiss built with cuVS (faiss.GpuIndexCagra) and a "
                             "visible GPU; this faiss has none: use 'ivf' or 'flat'")
        res = faiss.StandardGpuResources()
        self._keep.append(res)
        config = faiss.GpuIndexCagraConfig()
        config.graph_degree = int(graph_degree)
        config.intermediate_graph_degree = 2 * int(graph_degree)
        index = faiss.GpuIndexCagra(res, d, faiss.METRIC_INNER_PRODUCT, config)
        self._search_params = faiss.SearchParametersCagra()
        self._search_params.itopk_size = max(int(itopk_size), 1)
        return index, f"GpuIndexCagra(graph_degree={graph_degree}, itopk_size={itopk_size})"

    def _cpu_index(self, faiss: Any, kind: str, d: int, n: int, nlist: int | None, nprobe: int | None, hnsw_m: int,
                   ef_construction: int, ef_search: int, seed: int) -> tuple[Any, str, int | None]:
        """An empty CPU index of ``kind`` (flat, IVF or HNSW), its description and the nprobe to use."""
        if kind == "flat":
            return faiss.IndexFlatIP(d), "IndexFlatIP", nprobe
        if kind in ("ivf", "ivf_sq"):
            nlist = default_nlist(n) if nlist is None else int(nlist)
            if not 1 <= nlist <= n:
                raise ValueError(f"nlist must be in [1, {n}] (rows of x), got {nlist}")
            quantizer = faiss.IndexFlatIP(d)
            self._keep.append(quantizer)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
                )
            index.cp.seed = seed
            nprobe = max(1, nlist // 64) if nprobe is None else int(nprobe)
            return index, f"{type(index).__name__}(nlist={nlist})", nprobe
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        return index, f"IndexHNSWFlat(M={hnsw_m}, efConstruction={ef_construction}, efSearch={ef_search})", nprobe

    def _to_gpu(self, faiss: Any, index: Any) -> Any:
        """The index copied to GPU 0; ValueError for HNSW or when this faiss sees no GPU."""
        if self.kind == "hnsw":
            raise ValueError("HNSW has no GPU index in faiss; use kind='flat', 'ivf' or 'ivf_sq'")
        if not faiss_has_gpu():
            raise ValueError("use_gpu=True but the installed faiss has no GPU support or sees no GPU")
        res = faiss.StandardGpuResources()
        self._keep.append(res)
        return faiss.index_cpu_to_gpu(res, 0, index)

    def set_nprobe(self, nprobe: int, index: Any = None) -> None:
        """Sets the number of IVF lists searched per query (IVF kinds only)."""
        if self.kind not in ("ivf", "ivf_sq"):
            raise ValueError(f"nprobe applies to IVF indexes, this one is {self.kind!r}")
        index = self.index if index is None else index
        if hasattr(index, "nprobe"):
            index.nprobe = int(nprobe)
        else:  # pragma: no cover - GPU index wrappers
            import_faiss().GpuParameterSpace().set_index_parameter(index, "nprobe", int(nprobe))
        self.nprobe = int(nprobe)

    def search(self, q: ArrayLike, k: int = 1, *, absolute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k rows of this index for every row of q: (cosines (n, k) float32, indices (n, k) int64),
        cosines re-scored in float32; index -1 and cosine -inf where fewer than k results were found."""
        qn = as_unit_rows("q", q, device="cpu")
        if qn.shape[1] != self.d:
            raise ValueError(f"q must have d = {self.d} columns like the index, got shape {tuple(qn.shape)}")
        if not 1 <= k <= self.n:
            raise ValueError(f"k must be in [1, {self.n}] (rows in the index), got {k}")
        q_np = np.ascontiguousarray(qn.numpy())
        kw = {} if self._search_params is None else {"params": self._search_params}
        _, idx = self.index.search(q_np, k, **kw)
        idx = torch.from_numpy(idx).to(torch.int64)
        if absolute:
            _, idx_neg = self.index.search(np.ascontiguousarray(-q_np), k, **kw)
            idx = torch.cat([idx, torch.from_numpy(idx_neg).to(torch.int64)], dim=1)
        val = _gather_cos(qn, self.rows, idx, absolute)
        if absolute:  # merge the searches for q and -q, dropping duplicate indices
            dup = torch.zeros_like(idx, dtype=torch.bool)
            srt, order = idx.sort(dim=1)
            dup.scatter_(1, order[:, 1:], (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0))
            val = val.masked_fill(dup, -math.inf)
        val, order = val.topk(k, dim=1)
        idx = idx.gather(1, order)
        idx[torch.isinf(val)] = -1
        return val, idx


def _gather_cos(q: torch.Tensor, db: torch.Tensor, idx: torch.Tensor, absolute: bool) -> torch.Tensor:
    """Float32 cosines of q[i] with db[idx[i, j]]; -inf where idx is -1."""
    valid = idx >= 0
    safe = idx.clamp_min(0)
    out = torch.empty(idx.shape, dtype=torch.float32)
    chunk = max(1, 2**26 // (idx.shape[1] * q.shape[1]))
    for r0 in range(0, q.shape[0], chunk):
        out[r0:r0 + chunk] = torch.bmm(db[safe[r0:r0 + chunk]], q[r0:r0 + chunk].unsqueeze(2)).squeeze(2)
    if absolute:
        out = out.abs_()
    return out.masked_fill_(~valid, -math.inf)
