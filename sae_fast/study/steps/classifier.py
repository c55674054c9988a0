"""Step ``classifier``: is stability predictable from a decoder row? Logistic regression trained on one seed's
labels, tested on every other seed (scikit-learn, a core dependency).

Memory: O(S·F·d) decoders + the model's O(F·d) features. Artifacts: ``section.json`` (results.json → classifier).
"""

from __future__ import annotations

from typing import ClassVar, TypedDict

from ...analysis import classifier as clf_mod
from ...analysis.classifier import ClassifierResult
from ..step import Context
from .section import Section, SectionStep


class ClassifierEntries(TypedDict):
    classifier: ClassifierResult


class ClassifierStep(SectionStep):
    name: ClassVar[str] = "classifier"
    requires = ("stability",)
    setting_names = ("seed",)
    entries_type = ClassifierEntries

    def compute(self, ctx: Context) -> Section:
        labels = ctx.result("stability").labels
        return Section({"classifier": clf_mod.cross_seed_classifier(ctx.inputs.seeds.decoders(), list(labels),
                                                                    seed=ctx.cfg.seed)})
