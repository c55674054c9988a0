"""results.md of a `bench/gpu_check.sh` run: the stage table (limit, time, outcome), then each stage's tables and
findings taken from its log. Exit status 1 when a stage failed, ran out of time, or did not run.

    python bench/gpu_check/summary.py --out DIR --records STAGES.tsv --total SECONDS [--dry-run]

STAGES.tsv has one line per stage run: name, budget (s), seconds taken, exit status (124/137: stopped at the limit).
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TIMED_OUT = (124, 137)
PYTEST_SUMMARY = re.compile(r"^=*\s*(\d+ (passed|failed|error|skipped|deselected).* in [\d.]+s.*?)\s*=*$")
TAIL = 15  # lines of a failed stage's log shown in results.md


@dataclass
class Stage:
    name: str
    budget: int
    seconds: int
    rc: int

    @property
    def outcome(self) -> str:
        if self.rc == 0:
            return "ok"
        if self.rc in TIMED_OUT:
            return f"STOPPED at its limit (rc {self.rc})"
        return f"FAILED (rc {self.rc})"


def read_records(path: Path) -> list[Stage]:
    """The stage lines written by gpu_check.sh; a malformed line is an error naming the file and line."""
    stages = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts[1:]):
            raise SystemExit(f"{path}:{number}: expected 'name<TAB>budget<TAB>seconds<TAB>rc', got {line!r}")
        stages.append(Stage(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return stages


def findings(log: str) -> list[str]:
    """What a stage's log says that belongs in results.md: its `device:` lines and markdown tables, pytest's
    summary line, FAILED/ERROR lines and its ten slowest tests, and any `checks failed` report."""
    lines = log.splitlines()
    keep: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith(("device:", "|", "FAILED ", "ERROR ")):
            if line.startswith("|") and keep and keep[-1] and not keep[-1].startswith("|"):
                keep.append("")  # a table needs a blank line before it
            keep.append(line)
        elif (m := PYTEST_SUMMARY.match(line)) is not None:
            keep.append(f"pytest: {m.group(1)}")
        elif "slowest" in line and "durations" in line:
            rest = itertools.dropwhile(lambda row: not row.strip(), lines[i + 1:])
            block = list(itertools.takewhile(lambda row: row.strip() and not row.startswith(("=", "(")), rest))
            if block:
                keep += ["", "slowest:", *[f"    {row}" for row in block[:10]], ""]
        elif line.startswith("checks failed"):
            keep += lines[i:]
            break
    return keep


def report(out: Path, stages: list[Stage], total: int, dry_run: bool) -> str:
    what = "dry run (CPU, tiny shapes, Triton interpreter)" if dry_run else "GPU"
    lines = [
        f"# GPU check: {what}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"All stages: {total} s. Logs beside this file: <stage>.log, build.log.",
        "",
        "| stage | limit s | took s | outcome |",
        "|---|---|---|---|",
        *[f"| {s.name} | {s.budget} | {s.seconds} | {s.outcome} |" for s in stages],
    ]
    setup = out / "setup.log"
    if setup.exists():
        lines += ["", "## setup", "", "```", *setup.read_text().splitlines()[:20], "```"]
    for s in stages:
        if s.name == "setup":
            continue
        log_path = out / f"{s.name}.log"
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        lines += ["", f"## {s.name}: {s.outcome}", "", *findings(log)]
        if s.rc != 0:
            lines += ["", f"last {TAIL} lines of {s.name}.log:", "", "```", *log.splitlines()[-TAIL:], "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--total", type=int, required=True, help="seconds all stages took")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    stages = read_records(args.records)
    text = report(args.out, stages, args.total, args.dry_run)
    tmp = args.out / "results.md.tmp"
    tmp.write_text(text)
    tmp.replace(args.out / "results.md")
    print(text)
    return 0 if stages and all(s.rc == 0 for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
