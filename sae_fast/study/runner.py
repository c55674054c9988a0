"""Runs the study's steps (being moved here from seed_study: until then, the study runs there)."""

from __future__ import annotations

from ..seed_study import study

__all__ = ["study"]
