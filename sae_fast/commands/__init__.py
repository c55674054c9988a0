"""Subcommands of `sae-fast`, one module each (see sae_fast/cli.py for the contract)."""
