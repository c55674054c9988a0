"""Step ``firing``: every seed's positive codes on the held-out rows (CSR) and its firing frequencies.

The held-out rows are streamed in batches through each seed's encoder on ``--device``; only the positive entries
of its code are kept (a TopK SAE's positive top-k, a ReLU / JumpReLU / gated SAE's positive sparse code;
:mod:`sae_fast.analysis.codes`). Frequency, co-activation (candidates) and dead-latent masks come from these codes.

Memory: O(S·F·d) SAEs + O(batch·F) pre-activations of one batch + the codes O(S·nnz) (nnz <= N·k for TopK).
Artifacts: ``codes_<s>.npz`` (scipy CSR, N × F) per seed, ``arrays.npz`` (freq (S, F)).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from ...analysis.firing import frequency_from_codes, load_codes, save_codes, sparse_codes
from ..step import Context, StepError
from .section import NoEntries, Section, SectionStep


class Firing(Section):
    """freq (S, F) and, per seed, the (N, F) CSR of its positive activations (``codes``)."""

    codes: list[sp.csr_matrix]

    @property
    def freq(self) -> np.ndarray:
        return self.array("freq")


class FiringStep(SectionStep):
    name: ClassVar[str] = "firing"
    setting_names = ("max_eval_tokens",)
    result_type = Firing
    entries_type = NoEntries  # arrays and codes only

    def compute(self, ctx: Context) -> Firing:
        codes = []
        saes = ctx.inputs.seeds.saes
        for s, sae in enumerate(tqdm(saes, desc="encoding", disable=not ctx.progress, leave=False)):
            sae = sae.to(ctx.device)
            try:
                codes.append(sparse_codes(sae, ctx.batches()))
            finally:
                sae.to("cpu")
            save_codes(codes[-1], str(ctx.dir(self.name) / f"codes_{s}.npz"))
        result = Firing({}, {"freq": np.stack([frequency_from_codes(c) for c in codes])})
        result.codes = codes
        return result

    def load(self, ctx: Context) -> Firing:
        result = super().load(ctx)
        try:
            result.codes = [load_codes(str(ctx.out / self.name / f"codes_{s}.npz"))
                            for s in range(len(ctx.inputs.seeds.names))]
        except (OSError, ValueError) as err:
            raise StepError(f"the saved codes of study step firing in {ctx.out / self.name} cannot be read ({err}); "
                            "rerun with --redo firing") from err
        return result

    def render(self, result: Section, ctx: Context) -> list:
        return []
