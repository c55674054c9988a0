"""The study's settings: the analyses' parameters (:class:`StudyConfig`), the embedded default that is trained
when no run is given (:class:`EmbeddedDefault`), and the model a given run came from (:class:`StudyModel`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError


@dataclass
class StudyConfig:
    """Parameters of the analyses (defaults: the paper's where known, else method.md's proposals)."""

    theta: float = 0.7
    """cosine threshold of a cross-seed match"""
    eps: float = 0.05
    """endpoint split: stable if p̂ >= 1 - eps, unstable if p̂ <= eps"""
    absolute: bool = False
    """match on |cos| instead of the signed cosine"""
    anchor: int = 0
    """the seed whose SAE is analysed one-seed-at-a-time (masking, frequency, effective rank, snippets)"""
    subspace_set: str = "nonstable"
    """set used by the subspace analyses: 'unstable' (p̂ <= eps) or 'nonstable' (p̂ < 1 - eps; with few seeds
    the unstable endpoint is nearly empty)"""
    ratio: int = 4
    """masking: n stable versus ratio * n unstable features"""
    n_random: int = 5
    """random sets per masking comparison"""
    masking_seeds: int | None = None
    """masking: seeds whose n-vs-ratio·n ΔEV contrasts are measured, each with its own labels and frequencies
    (the anchor, then the next seeds in order), for a seed-bootstrap interval; None: every seed"""
    ranks: tuple[int, ...] = (8, 16, 32, 64)
    """ranks r of the cross-seed subspace comparison"""
    subspace_draws: int = 3
    """subsamples (of each set and of random latents, at a common n <= F/4) for the subspace null and its z-score"""
    candidate_method: str | None = None
    """candidate clustering affinity: 'correlation' (default with activations), 'coactivation', 'cosine' or 'max'"""
    candidate_threshold: float = 0.1
    """affinity at which the candidate clustering stops merging"""
    candidate_tau: float = 0.7
    """a candidate is reproduced in a seed when its best subspace similarity there is >= tau"""
    pool_seeds: int | None = None
    """seeds used to build the pool (the rest are held out); None: half, at least 2"""
    pool_min_recurrence: int = 2
    """base pool: features recurring in at least this many pool seeds replace the base seed's nearest latents"""
    refit_steps: int = 500
    """pooled SAEs and the base seed (control): encoder refit steps with the decoder frozen (0: none)"""
    finetune_steps: int = 500
    """pooled SAEs and the base seed (control): fine-tuning steps of every parameter, from the pool (0: none)"""
    refit_batch_size: int = 1024
    """rows per refit / fine-tuning step"""
    max_refit_tokens: int = 262_144
    """encoder refit: training activations held in memory (first rows of the cache or of --refit-activations;
    fp32, so 262,144 rows are 0.4 GB at d = 384 and 4 GB at d = 4096)"""
    exclude_dead: bool = True
    """leave latents that never fire on the held-out activations out of the subspace analyses"""
    max_eval_tokens: int = 50_000
    """held-out activations used (first rows)"""
    splice_texts: int = 128
    """held-out texts for the splice analyses (the embedded default's embedding distortion, a causal LM's
    next-token loss with --model; 0: skip them)"""
    snippet_latents: int = 6
    """latents per group shown with their top-activating snippets"""
    snippet_top: int = 5
    """snippets per latent"""
    browse_seed: int | None = None
    """seed (index) whose latents the feature browser and exports show (default: the anchor)"""
    browse_bins: int = 20
    """activation histogram bins per latent in the feature browser and exports"""
    batch_size: int = 4096
    """rows per encode batch"""
    neighbours: int = 16
    """top-m cross-seed neighbours kept per latent (the sparse graph pooling and candidate clustering use)"""
    coactivation_rows: int = 20_000
    """held-out rows whose top-k codes feed the candidates' co-activation affinity"""
    seed: int = 0
    """seed of every random choice of the analyses"""

    def __post_init__(self) -> None:
        if not 0 < self.theta <= 1:
            raise UsageError(f"theta must be in (0, 1], got {self.theta}")
        if not 0 <= self.eps < 0.5:
            raise UsageError(f"eps must be in [0, 0.5), got {self.eps}")
        if self.subspace_set not in ("unstable", "nonstable"):
            raise UsageError(f"subspace_set must be 'unstable' or 'nonstable', got {self.subspace_set!r}")
        if self.pool_min_recurrence < 2:
            raise UsageError(f"pool_min_recurrence must be >= 2 (seeds), got {self.pool_min_recurrence}")
        self.ranks = tuple(int(r) for r in self.ranks)
        for name in ("batch_size", "neighbours", "coactivation_rows", "max_eval_tokens", "subspace_draws",
                     "n_random", "ratio", "refit_batch_size", "browse_bins"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.masking_seeds is not None and int(self.masking_seeds) < 1:
            raise UsageError(f"masking_seeds must be a number of seeds >= 1 (or None: every seed), got "
                             f"{self.masking_seeds}")
        if self.browse_seed is not None and int(self.browse_seed) < 0:
            raise UsageError(f"browse_seed must be a seed index >= 0, got {self.browse_seed}")
        if any(r < 1 for r in self.ranks):
            raise UsageError(f"ranks must be positive, got {self.ranks}")


@dataclass
class EmbeddedDefault:
    """What `sae-fast study` trains when given no run: MiniLM layer 3 on Shakespeare, a few small seeds."""

    num_seeds: int = 8
    """SAEs (seeds) to train (8: p̂ in steps of 1/7; the README explains the choice)"""
    train_texts: int = 3000
    """Shakespeare sentences whose activations are cached for training (~28 tokens each)"""
    eval_texts: int = 600
    """the following sentences, held out for the analyses"""
    layer: int = 3
    """MiniLM block whose output is read (d = 384)"""
    expansion_factor: int = 4
    """F = expansion_factor * 384 (4: F = 1536; the paper trains 16–32×, see the README)"""
    k: int = 8
    """TopK (8 of 1536 = 0.52 % of the latents; the paper's k/F ≈ 0.4 %)"""
    total_tokens: int = 600_000
    """training tokens per seed (the cache is cycled)"""
    train_batch_size: int = 1024
    """training batch (tokens per step)"""
    lr: float | None = 2e-3
    """learning rate (None: the trainer's default scaling)"""
    device: str = "cpu"
    """torch device for caching the activations and training the seeds (the analyses run on the CPU)"""
    model_path: str | None = None
    """a folder with a copy of MiniLM (bench/pack_minilm.py; then use --splice-texts 0 if it holds only the first
    blocks); None: the installed package"""
    extra: dict[str, Any] = field(default_factory=dict)
    """further TrainConfig fields"""


@dataclass
class StudyModel:
    """The model a given run's seeds were trained on (``sae-fast study RUN_DIR --model PATH``): held-out activations
    (when none are given), top-activating snippets and, for a causal LM, the spliced next-token loss come from it."""

    path: str
    """Hugging Face model folder, or 'embedded' for MiniLM (then the embedding distortion is reported)"""
    layer: int | None = None
    """hook point: the output of block L (as ModelSource)"""
    module: str | None = None
    """hook point: the output of the module with this name instead"""
    texts: list[str] | None = None
    """held-out texts; None: the Shakespeare sentences after the embedded default's training sentences"""
    max_length: int = 128
    """tokens per text"""
    device: str = "cpu"
    """device that runs the model"""
