"""Power and false-positive rate of the study's subspace and candidate tests on planted studies.

    python bench/study_calibration.py [--repeats 10] [--shares 0 0.1 0.3 0.5 0.9] [--seeds 4 8] [--out FILE.json]

Runs :func:`sae_fast.analysis.calibration.calibrate` (planted decoders with a known share of latents in shared
low-rank groups; share 0 is the negative control, whose rejection rate is the false-positive rate) and prints one
row per cell. The "Study calibration" tables of bench/RESULTS.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import time

from sae_fast.analysis.calibration import CalibrationSettings, PlantedStudy, calibrate, describe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.1, 0.3, 0.5, 0.9])
    ap.add_argument("--seeds", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--null-draws", type=int, default=50)
    ap.add_argument("--candidate-null-draws", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    settings = CalibrationSettings(null_draws=args.null_draws, candidate_null_draws=args.candidate_null_draws)
    start = time.time()
    rows = calibrate(shares=tuple(args.shares), seed_counts=tuple(args.seeds), repeats=args.repeats,
                     settings=settings, progress=True)
    print("| seeds | grouped share | subspace test rejects | candidate test rejects (BH 0.05) | candidate AUC | R |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['num_seeds']} | {r['grouped_share']:.1f} | {r['subspace_rejection']:.2f} | "
              f"{r['candidate_rejection']:.2f} | {r['candidate_auc']:.3f} | {r['subspace_R']:.2f} |")
    print(f"{time.time() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "settings": describe(PlantedStudy(), settings)}, f, indent=1)


if __name__ == "__main__":
    main()
