"""What most steps share: a result made of report entries (the step's keys of ``results.json``) and arrays,
saved as ``<out>/<step>/section.json`` + ``arrays.npz`` and read back as the same typed result.

The entries are typed: each step declares ``entries_type``, a ``TypedDict`` of its top-level results.json keys
(nested ``TypedDict``s for the parts the report and other steps read), and the entries are checked against it
(:func:`~sae_fast.study.typed.check_typed`) before they are saved (a step that leaves a part out is a bug, not
an incomplete artifact) and after they are read back (an artifact of an older version asks for ``--redo``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypedDict

import numpy as np

from ...checkpoint import atomic_write, atomic_write_json
from ...provenance import to_jsonable
from ..config import StudyConfig
from ..report import SECTIONS
from ..step import Block, Context, StepError
from ..typed import check_typed

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


class NoEntries(TypedDict):
    """The entries of a step that writes no results.json keys (its result is arrays only)."""


class SectionStep:
    """Base of the steps whose result is a :class:`Section`: ``compute`` returns it, saving and loading are here.
    Subclasses set ``name``, ``requires``, ``setting_names`` (StudyConfig fields that change the result) and
    ``entries_type`` (the ``TypedDict`` of their entries)."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    setting_names: ClassVar[tuple[str, ...]] = ()
    result_type: ClassVar[type[Section]] = Section
    entries_type: ClassVar[type] = NoEntries

    def settings(self, cfg: StudyConfig) -> dict[str, Any]:
        return {n: getattr(cfg, n) for n in self.setting_names}

    def compute(self, ctx: Context) -> Section:
        raise NotImplementedError

    def run(self, ctx: Context) -> Section:
        result = self.compute(ctx)
        entries = to_jsonable(result.entries)
        check_typed(entries, self.entries_type, f"study step {self.name!r} (a bug: its result is incomplete)")
        folder = ctx.dir(self.name)
        arrays = dict(result.arrays)
        atomic_write(folder / ARRAYS_FILE, lambda f: np.savez(f, **arrays))
        atomic_write_json(folder / SECTION_FILE, entries)
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
        check_typed(entries, self.entries_type, f"the saved result of study step {self.name!r} in {folder}",
                    hint=f" (saved by an older version?); rerun with --redo {self.name}")
        return self.result_type(entries, arrays)

    def render(self, result: Section, ctx: Context) -> list[Block]:
        section = SECTIONS.get(self.name)
        if section is None:
            return []
        return section(ctx.report_results, ctx.figures, ctx.snippets)
