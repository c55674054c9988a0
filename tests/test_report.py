"""The report: self-contained HTML with embedded plots, markdown twin, values traced to results.json."""

from __future__ import annotations

import json

import pytest

from sae_fast.study.report import _get, write_report


def _results() -> dict:
    return {
        "config": {"theta": 0.7, "eps": 0.05, "anchor": 0},
        "source": {"num_seeds": 3, "seeds": ["a", "b", "c"], "d": 8, "num_latents": 16, "k": 2, "eval_tokens": 100},
        "stability": {"p_hat_resolution": 0.5, "anchor": {
            "share_stable": 0.25, "share_unstable": 0.5, "share_neither": 0.25, "p_hat_mean": 0.375,
            "p_hat_hist": {"counts": [8, 4, 4], "edges": [0, 0.4, 0.8, 1.0]},
            "best_cos_hist": {"counts": [3, 5], "edges": [-1, 0, 1]}, "best_cos_mean": 0.123456},
            "all_anchors": {"share_stable": 0.3, "share_unstable": 0.4}},
        "masking": {"ev_full": 0.9, "fvu_full": 0.1, "n": 2, "ratio": 4, "sizes": {"stable": 4, "unstable": 8},
                    "ev": {"stable": 0.5, "unstable": 0.85}, "delta_ev": {"stable": 0.4, "unstable": 0.05},
                    "random": {"random_like_stable": {"delta_ev_mean": 0.2, "delta_ev_std": 0.01, "draws": 3}}},
        "lm_loss": {"skipped": "no model given"},
        "synthetic": {"p_hat_isolated": 1.0, "p_hat_grouped": 0.2, "group_mean_cos2": 0.98,
                      "group_cross_seed_mean_cos2": 0.97, "haar_mean_cos2": 0.125, "isolated_recovered_share": 1.0,
                      "isolated_mcc": 0.9, "group_max_angle_median": 0.1,
                      "nonstable_span": {"group_energy": 0.8, "isolated_energy": 0.1, "haar": 0.2},
                      "candidates": dict.fromkeys(("score_mean", "mean_best_similarity", "null_subset_score_mean",
                                                   "null_subset_mean_best_similarity", "null_haar_score_mean",
                                                   "nonstable_grouped_in_reproducible",
                                                   "nonstable_other_in_reproducible"), 0.5)},
        "timings_seconds": {"stability": 0.5, "masking": 1.0, "synthetic": 2.0},
    }


def _frequency() -> dict:
    group = {"count": 4, "mean": 0.0044, "median": 0.004, "dead_share": 0.0, "mean_percent": 0.44,
             "median_percent": 0.4}
    return {"anchor": {"all": group, "stable": group, "unstable": group, "neither": group}, "k_over_F": 0.0039,
            "k_over_F_percent": 0.39}


def test_write_report(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(_results()))
    paths = write_report(tmp_path)
    html = paths["html"].read_text()
    md = paths["markdown"].read_text()
    assert html.count("data:image/png;base64,") == 3  # stability, masking, synthetic
    assert "src='figures" not in html  # self-contained
    assert "0.1235" in md and "`stability.anchor.best_cos_mean`" in md
    assert "0.4" in md and "`masking.delta_ev.stable`" in md
    assert (tmp_path / "figures" / "synthetic.png").is_file()
    assert "not computed — no model given" in md  # the LM-loss splice is declared absent, not silently missing


def test_a_number_missing_from_a_section_that_ran_is_an_error(tmp_path):
    from sae_fast.study.typed import MissingResultError

    res = _results()
    del res["masking"]["fvu_full"]
    (tmp_path / "results.json").write_text(json.dumps(res))
    with pytest.raises(MissingResultError, match=r"'masking'.*`masking\.fvu_full`"):
        write_report(tmp_path)
    res["timings_seconds"].pop("masking")  # the step did not run: its section is not rendered at all
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert "2. Function: masking" not in write_report(tmp_path)["markdown"].read_text()


def test_get_and_missing_results(tmp_path):
    res = _results()
    assert _get(res, "stability.anchor.share_stable") == 0.25
    assert _get(res, "source.seeds.1") == "b"
    assert _get(res, "no.such.path") is None
    with pytest.raises(FileNotFoundError, match=r"results\.json"):
        write_report(tmp_path)


def test_candidate_rows_follow_the_anchor_and_list_top_candidates(tmp_path):
    res = _results()
    res["config"]["anchor"] = 1
    cand = {"seed": 1, "latents": [3, 5, 9], "size": 3, "rank": 2, "score": 1.0, "mean_best_similarity": 0.9,
            "null_similarity": 0.3, "p_value": 0.02, "reproducible": True}
    null = {"score_mean": 0.1, "mean_best_similarity": 0.3, "mean_best_similarity_q99": 0.5}
    res["candidates"] = {"candidates": [cand], "score_mean": 1.0, "reproduced_share": 1.0, "reproducible_share": 1.0,
                         "mean_best_similarity": 0.9, "null": null, "null_haar": {**null, "score_mean": 0.0},
                         "params": {"method": "correlation"},
                         "per_seed": [{"num_candidates": 0, "share_in_reproducible": 0.0},
                                      {"num_candidates": 1, "share_in_reproducible": 0.5}]}
    res["frequency"] = _frequency()
    res["snippets_file"] = None
    res["timings_seconds"].update(candidates=0.1, frequency=0.1)
    (tmp_path / "results.json").write_text(json.dumps(res))
    md = write_report(tmp_path)["markdown"].read_text()
    assert "`candidates.per_seed.1.num_candidates`" in md and "candidates of the anchor (seed 1) | 1 |" in md
    assert "per_seed.0" not in md
    assert "| 1 | 3, 5, 9 | 2 | 1 | 0.9 | 0.3 | 0.02 | `candidates.candidates.0` |" in md
    assert "Haar null" in md and "subset null" in md
    assert "(% of tokens) | 0.44 |" in md and "n (stable)" not in md


def test_lm_loss_table_or_the_reason_it_is_absent(tmp_path):
    res = _results()
    res["lm_loss"] = {"model": "tiny-gpt2", "hook": "layers.1", "num_texts": 4, "num_tokens": 40, "clean": 1.5,
                      "masks": {name: {"name": name, "size": size, "loss": loss, "delta_vs_clean": loss - 1.5,
                                       "delta_vs_recon": loss - 1.75}
                                for name, size, loss in (("none", 0, 1.75), ("stable", 4, 2.5),
                                                         ("unstable", 8, 1.875))}}
    (tmp_path / "results.json").write_text(json.dumps(res))
    md = write_report(tmp_path)["markdown"].read_text()
    assert "Next-token loss of tiny-gpt2" in md and "| clean loss (no splice) | 1.5 | `lm_loss.clean` |" in md
    assert "| stable | 4 | 2.5 | 1 | 0.75 | `lm_loss.masks.stable` |" in md
    assert "| none | 0 | 1.75 | 0.25 | 0 | `lm_loss.masks.none` |" in md
    res["lm_loss"] = {"skipped": "the model is not a causal LM"}
    res.update(frequency=_frequency(), snippets_file=None, snippets_skipped="no tokens")
    res["timings_seconds"]["frequency"] = 0.1
    (tmp_path / "results.json").write_text(json.dumps(res))
    md = write_report(tmp_path)["markdown"].read_text()
    assert "not computed — the model is not a causal LM." in md
    assert "Top-activating snippets: not computed — no tokens" in md
    assert "lm_loss.masks" not in md
