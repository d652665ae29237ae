"""Results reported by Ainslie et al. (2023), as data to put beside our own.

Source: arXiv 2305.13245 v3 (EMNLP 2023). Table 1 is exact; Figure 6 values
are read off the chart (about +-0.02 s).
"""

from __future__ import annotations

__all__ = [
    "TABLE1", "TABLE1_COLUMNS", "FIGURE4_AVERAGE", "FIGURE4_ALPHA", "FIGURE6_GROUPS", "FIGURE6_SECONDS",
    "UPTRAIN_ALPHA", "UPTRAIN_XXL_TPUV3_CHIP_DAYS", "MQA_UPTRAINED_RUNS_AVERAGED",
]

TABLE1_COLUMNS = ("T_infer", "Average", "CNN", "arXiv", "PubMed", "MediaSum", "MultiNews", "WMT", "TriviaQA")
"""T_infer: seconds per sample per TPUv4 chip; summarisation columns ROUGE-1, WMT BLEU, TriviaQA F1."""

TABLE1: dict[str, dict[str, float]] = {
    name: dict(zip(TABLE1_COLUMNS, values))
    for name, values in {
        "MHA-Large": (0.37, 46.0, 42.9, 44.6, 46.2, 35.5, 46.6, 27.7, 78.2),
        "MHA-XXL": (1.51, 47.2, 43.8, 45.6, 47.5, 36.4, 46.9, 28.4, 81.9),
        "MQA-XXL": (0.24, 46.6, 43.0, 45.0, 46.9, 36.1, 46.5, 28.5, 81.3),
        "GQA-8-XXL": (0.28, 47.1, 43.5, 45.4, 47.7, 36.3, 47.2, 28.4, 81.6),
    }.items()
}
"""T5.1.1 models uptrained with alpha = 0.05 (Table 1 of the paper)."""

FIGURE6_GROUPS = (1, 4, 8, 16, 32, 64)
"""Number of KV groups of GQA-XXL in Figure 6 (1 is MQA, 64 is MHA)."""

FIGURE6_SECONDS = (0.49, 0.48, 0.52, 0.60, 0.80, 2.53)
"""Time per sample (s) for input length 2048 and output 512, read off Figure 6."""

FIGURE4_ALPHA = 0.05
"""Uptraining fraction of Figure 4 (T5-Large converted to MQA)."""

FIGURE4_AVERAGE = {"mean": 55.4, "first": 55.0, "random": 54.5}
"""Average of CNN, MultiNews and TriviaQA per conversion method, read off Figure 4 (about +-0.2; the
text states only the order: mean pooling, then first head, then random initialisation)."""

UPTRAIN_ALPHA = 0.05
"""Fraction of the original pre-training steps spent uptraining the converted T5 models (experimental setup)."""

UPTRAIN_XXL_TPUV3_CHIP_DAYS = 600
"""What uptraining T5-XXL at alpha = 0.05 cost, about 600 TPUv3 chip-days (experimental setup)."""

MQA_UPTRAINED_RUNS_AVERAGED = 3
"""The appendix reports the uptrained MQA models, which varied from run to run, as averages over 3 runs."""
