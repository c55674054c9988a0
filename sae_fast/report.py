"""The study's report (moved to :mod:`sae_fast.study.report`; this name keeps older imports working)."""

from __future__ import annotations

from .study.report import SECTIONS, Block, build_blocks, write_report

__all__ = ["SECTIONS", "Block", "build_blocks", "write_report"]
