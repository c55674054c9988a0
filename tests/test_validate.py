"""Range checks shared by the command line and the Python API."""

from __future__ import annotations

import argparse
import math

import pytest

from sae_fast.errors import OutputDirError, UsageError
from sae_fast.validate import (
    device,
    eps,
    eps_arg,
    non_negative_int,
    output_file,
    positive_float,
    positive_int,
    positive_int_arg,
    theta,
    theta_arg,
)


def test_theta_is_a_cosine() -> None:
    assert theta(-1) == -1.0 and theta(1) == 1.0 and theta("0.7") == 0.7
    for bad in (5, -1.0001, math.nan, math.inf, "x", None, True):
        with pytest.raises(UsageError, match="theta must be"):
            theta(bad)


def test_eps_is_in_the_half_open_interval() -> None:
    assert eps(0) == 0.0 and eps(0.4999) == 0.4999
    for bad in (0.5, 0.9, -0.01, math.nan):
        with pytest.raises(UsageError, match=r"eps must be in \[0, 0\.5\)"):
            eps(bad)


def test_sizes() -> None:
    assert positive_int(3, "k") == 3 and positive_int("7", "k") == 7 and non_negative_int(0, "n") == 0
    for bad in (0, -1, "1.5", 2.0, True):
        with pytest.raises(UsageError, match="k must be a positive integer"):
            positive_int(bad, "k")
    with pytest.raises(UsageError, match="n must be a non-negative integer"):
        non_negative_int(-1, "n")
    assert positive_float("1e-3", "s") == 1e-3
    for bad in (0, -2.0, math.inf, math.nan):
        with pytest.raises(UsageError, match="s must be a positive number"):
            positive_float(bad, "s")


def test_argparse_types_report_through_argparse() -> None:
    assert theta_arg("0.5") == 0.5 and eps_arg("0.1") == 0.1 and positive_int_arg("4") == 4
    with pytest.raises(argparse.ArgumentTypeError, match=r"theta must be a cosine threshold in \[-1, 1\], got '5'"):
        theta_arg("5")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^must be a positive integer, got 0$"):
        positive_int_arg("0")


def test_output_file(tmp_path) -> None:
    assert output_file(tmp_path / "new" / "m.safetensors") == tmp_path / "new" / "m.safetensors"
    with pytest.raises(OutputDirError, match="is a folder"):
        output_file(tmp_path)


def test_device_exists_here() -> None:
    import torch

    assert device("cpu") == torch.device("cpu") and device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(UsageError, match="device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'tpu'"):
        device("tpu")
    with pytest.raises(UsageError, match="must be a torch device"):
        device(3.5, "device")
    with pytest.raises(UsageError, match=r"CUDA is not available|CUDA device"):
        device("cuda:99")  # never this many GPUs, and none on a CPU machine
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="device is 'cuda' but CUDA is not available on this machine"):
            device("cuda")


def test_match_and_stability_name_a_bad_device() -> None:
    import numpy as np

    from sae_fast.matching import match
    from sae_fast.stability import stability_scores

    a = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    with pytest.raises(UsageError, match="device must be a torch device"):
        match(a, a, device="tpu")
    with pytest.raises(UsageError, match="device must be a torch device"):
        stability_scores([a, a], device="tpu", progress=False)
