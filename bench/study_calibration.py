"""Power and false-positive rate of the study's subspace and candidate tests on planted studies.

    python bench/study_calibration.py [--repeats 10] [--shares 0 0.1 0.3 0.5 0.9] [--seeds 4 8] [--out FILE.json]
        [--n-stable 640] [--max-outside-share 0.05] [--no-beyond-matches]

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
    ap.add_argument("--n-stable", type=int, default=PlantedStudy().n_stable, help="stable latents per planted seed")
    ap.add_argument("--max-outside-share", type=float, default=CalibrationSettings().max_outside_share,
                    help="the subspace test's null sample as a share of the outside set (0.5: the old default)")
    ap.add_argument("--no-beyond-matches", action="store_true",
                    help="score candidates with their individually matched latents (the old scoring)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    settings = CalibrationSettings(null_draws=args.null_draws, candidate_null_draws=args.candidate_null_draws,
                                   max_outside_share=args.max_outside_share,
                                   candidate_beyond_matches=not args.no_beyond_matches)
    base = PlantedStudy(n_stable=args.n_stable)
    start = time.time()
    rows = calibrate(shares=tuple(args.shares), seed_counts=tuple(args.seeds), repeats=args.repeats, base=base,
                     settings=settings, progress=True)
    print("| seeds | grouped share | subspace test rejects | candidate test rejects (BH 0.05) | candidate AUC | R |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['num_seeds']} | {r['grouped_share']:.1f} | {r['subspace_rejection']:.2f} | "
              f"{r['candidate_rejection']:.2f} | {r['candidate_auc']:.3f} | {r['subspace_R']:.2f} |")
    print(f"{time.time() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "settings": describe(base, settings)}, f, indent=1)


if __name__ == "__main__":
    main()
