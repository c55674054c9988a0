"""Triton kernels of sae_fast, installed as the subpackage `sae_fast.kernels`."""
