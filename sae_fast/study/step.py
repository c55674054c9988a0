"""The contract every analysis of the study follows, and the context it runs in.

A step (one module under ``sae_fast/study/steps/``) has a ``name`` (also its artifact folder ``<out>/<name>/``),
the names of the earlier steps whose results it reads (``requires``), the settings that change its result
(``settings``, fingerprinted), and four methods: ``run`` computes and writes its artifacts under
``ctx.dir(name)`` and returns a typed result (a dataclass; a :class:`~sae_fast.study.steps.section.Section`'s
results.json entries are checked against the step's ``TypedDict``, :mod:`sae_fast.study.typed`), ``load`` reads
that result back from the artifacts,
and ``render`` turns the result into its report section (a list of :data:`Block`). A step with a true attribute
``opening`` (e.g. a verdict table) has its section rendered first, right after the report's header.

A step's fingerprint hashes its settings, the identity of the study's inputs and the fingerprints of the steps
it requires, so a changed setting recomputes that step and everything downstream of it, nothing upstream. The
runner writes the completion marker ``<out>/<name>/done.json`` (holding the fingerprint) last and atomically,
after every artifact: a step killed mid-way has no marker and is recomputed; a step whose marker matches is
loaded, not recomputed.

Memory: the context holds the study's decoders (O(S·F·d)) and the results of finished steps; held-out
activations are streamed (O(batch·d) per batch).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from ..checkpoint import atomic_write_json
from ..errors import DataError
from ..provenance import settings_digest, to_jsonable

if TYPE_CHECKING:  # the config and inputs import the step contract's users, not the other way round
    from .config import StudyConfig
    from .inputs import Inputs

Block = tuple[str, Any]
"""A report block: ("h2", text) | ("h3", text) | ("p", html text) | ("table", (header, rows)) | ("fig", (name, png))
| ("pre", text)."""

MARKER = "done.json"
"""completion marker of a step, written last; holds the step's fingerprint and settings"""


class StepError(DataError):
    """A step's result is missing or unreadable where another step or the report needs it."""


@runtime_checkable
class Step(Protocol):
    """One analysis of the study (see the module docstring)."""

    name: str
    requires: tuple[str, ...]

    def settings(self, cfg: StudyConfig) -> dict[str, Any]:
        """The settings that change this step's result (fingerprinted)."""
        ...

    def run(self, ctx: Context) -> Any:
        """Compute, write the artifacts under ``ctx.dir(self.name)``, return the typed result."""
        ...

    def load(self, ctx: Context) -> Any:
        """Read the typed result back from the artifacts ``run`` wrote."""
        ...

    def render(self, result: Any, ctx: Context) -> list[Block]:
        """The report section of this step."""
        ...


@dataclass
class Context:
    """What a step sees: the settings, the output folder, the device, the inputs, earlier steps' results.

    ``results`` and ``fingerprints`` are filled by the runner as steps finish or are reused.
    """

    cfg: StudyConfig
    out: Path
    inputs: Inputs
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    results: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    loaders: dict[str, Callable[[], Any]] = field(default_factory=dict)
    report_results: dict[str, Any] = field(default_factory=dict)
    """results.json as the report reads it (set by the runner before rendering)"""
    figures: dict[str, bytes] = field(default_factory=dict)
    snippets: dict[str, Any] | None = None

    def dir(self, name: str) -> Path:
        """The artifact folder of step ``name`` (created)."""
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def result(self, name: str) -> Any:
        """The typed result of the earlier step ``name``; a StepError when it was neither run nor saved."""
        if name not in self.results and name in self.loaders and is_done(self.out / name):
            self.results[name] = self.loaders[name]()
        if name not in self.results:
            raise StepError(f"the study step {name!r} has no result in {self.out / name} (it did not run, or was "
                            f"killed before finishing); run the study with that step (--only {name})")
        return self.results[name]

    def batches(self, rows: int | None = None) -> Iterator[torch.Tensor]:
        """Held-out activations as a stream of (batch, d) float32 tensors on ``device`` (first ``rows`` rows)."""
        yield from self.inputs.batches(self.cfg.batch_size, self.device, rows=rows)


def fingerprint(step: Step, cfg: StudyConfig, input_identity: dict[str, Any], upstream: dict[str, str]) -> str:
    """Hash of the step's settings, the inputs' identity and the fingerprints of the steps it requires."""
    missing = [r for r in step.requires if r not in upstream]
    if missing:
        raise StepError(f"study step {step.name!r} requires {missing}, which come later or not at all in the plan")
    return settings_digest({"step": step.name, "settings": to_jsonable(step.settings(cfg)),
                            "inputs": to_jsonable(input_identity),
                            "requires": {r: upstream[r] for r in step.requires}})


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The completion marker of a step folder, or None (absent or unreadable: the step did not finish)."""
    import json

    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_done(folder: Path, fp: str | None = None) -> bool:
    """Whether the step folder holds a finished result (with fingerprint ``fp`` when given)."""
    marker = read_marker(folder)
    return marker is not None and (fp is None or marker.get("fingerprint") == fp)


def begin(folder: Path) -> None:
    """Empty a step folder before the step runs (so no artifact of an earlier, different run survives)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def finish(folder: Path, fp: str, settings: dict[str, Any], seconds: float) -> None:
    """Write the completion marker, last and atomically."""
    atomic_write_json(folder / MARKER, {"fingerprint": fp, "settings": to_jsonable(settings),
                                        "seconds": round(seconds, 3)})
