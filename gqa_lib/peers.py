"""Benchmarks against Hugging Face transformers (placeholder being written)."""


def add_peer_commands(subparsers) -> None:
    """Add the ``peers`` and ``prefill`` subcommands to ``python -m gqa_lib.bench``."""
