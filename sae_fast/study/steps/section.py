"""What most steps share: a result made of report entries (the step's keys of ``results.json``) and arrays,
saved as ``<out>/<step>/section.json`` + ``arrays.npz`` and read back as the same typed result."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...checkpoint import atomic_write, atomic_write_json
from ...provenance import to_jsonable
from ..config import StudyConfig
from ..report import SECTIONS
from ..step import Block, Context, StepError

SECTION_FILE = "section.json"
ARRAYS_FILE = "arrays.npz"


@dataclass
class Section:
    """A step's result: ``entries`` (top-level keys of results.json, JSON values) and named ``arrays``."""

    entries: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise StepError(f"the saved result lacks the array {name!r} (saved by an older version?); rerun with "
                            "--redo for that step")
        return self.arrays[name]


class SectionStep:
    """Base of the steps whose result is a :class:`Section`: ``compute`` returns it, saving and loading are here.
    Subclasses set ``name``, ``requires``, ``setting_names`` (StudyConfig fields that change the result)."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    setting_names: ClassVar[tuple[str, ...]] = ()
    result_type: ClassVar[type[Section]] = Section

    def settings(self, cfg: StudyConfig) -> dict[str, Any]:
        return {n: getattr(cfg, n) for n in self.setting_names}

    def compute(self, ctx: Context) -> Section:
        raise NotImplementedError

    def run(self, ctx: Context) -> Section:
        result = self.compute(ctx)
        folder = ctx.dir(self.name)
        arrays = dict(result.arrays)
        atomic_write(folder / ARRAYS_FILE, lambda f: np.savez(f, **arrays))
        atomic_write_json(folder / SECTION_FILE, to_jsonable(result.entries))
        return result

    def load(self, ctx: Context) -> Section:
        folder = ctx.out / self.name
        try:
            entries = json.loads((folder / SECTION_FILE).read_text())
            with np.load(folder / ARRAYS_FILE, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise StepError(f"the saved result of study step {self.name!r} in {folder} cannot be read ({err}); "
                            f"rerun with --redo {self.name}") from err
        return self.result_type(entries, arrays)

    def render(self, result: Section, ctx: Context) -> list[Block]:
        section = SECTIONS.get(self.name)
        if section is None:
            return []
        return section(ctx.report_results, ctx.figures, ctx.snippets)
