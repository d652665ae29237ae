"""Hugging Face Llama-family checkpoints in and out of gqa_lib's :class:`~gqa_lib.TransformerLM`.

A checkpoint folder holds ``config.json`` and the weights as safetensors: one
``model.safetensors``, or shards listed by ``model.safetensors.index.json``.
gqa_lib's model uses the parameter names of ``LlamaForCausalLM`` and its
RoPE convention (rotate-half: coordinate ``i`` of a head pairs with
``i + D/2``), so a tensor is read or written under its own name, unchanged;
a head is the same rows in both libraries.

Only what gqa_lib's model computes is accepted: a ``llama`` or ``mistral``
config without sliding windows, RoPE scaling or a head dimension other than
``hidden_size / num_attention_heads``, with the SiLU activation. Anything
else is a ValueError naming the field. Nothing here imports transformers, and
nothing is unpickled.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..checks import as_count
from ..core.model import TransformerConfig, TransformerLM
from .convert import CONVERSION_METHODS, GROUPINGS, head_rows, pool_heads, similar_orders

__all__ = ["config_from_hf", "config_to_hf", "from_pretrained", "save_pretrained", "convert_checkpoint", "main"]

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _rope_theta(hf: dict) -> float:
    """RoPE base of a config: ``rope_theta``, or ``rope_parameters["rope_theta"]`` (transformers 5)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind not in (None, "default"):
        raise ValueError(f"rope type {kind!r} (RoPE scaling) is not supported; gqa_lib's RoPE is the default one")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict) -> TransformerConfig:
    """The :class:`TransformerConfig` of a Hugging Face ``config.json`` dict; ValueError naming what does not fit."""
    if not isinstance(hf, dict):
        raise ValueError(f"config must be a dict read from config.json; got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not Llama-compatible; supported: {SUPPORTED_MODEL_TYPES}")
    if hf.get("sliding_window") not in (None, 0):
        raise ValueError(f"sliding_window={hf['sliding_window']} is not supported (gqa_lib attends to every position)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported; the SwiGLU MLP uses 'silu'")
    if hf.get("mlp_bias"):
        raise ValueError("mlp_bias=True is not supported; the SwiGLU MLP has no biases")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d_model // n_heads
    if head_dim * n_heads != d_model:
        raise ValueError(f"head_dim={head_dim} with {n_heads} heads does not make hidden_size={d_model}; "
                         "gqa_lib needs head_dim = hidden_size / num_attention_heads")
    return TransformerConfig(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        d_model=d_model,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        d_ff=hf["intermediate_size"],
        rope_theta=_rope_theta(hf),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bias=bool(hf.get("attention_bias", False)),
    )


def config_to_hf(config: TransformerConfig, dtype: torch.dtype = torch.float32) -> dict:
    """A ``config.json`` dict for ``LlamaForCausalLM`` describing ``config`` (weights stored in ``dtype``)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.d_ff,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.bias,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, from its index if it is sharded."""
    index = folder / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no weight_map")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
    elif (folder / WEIGHTS_FILE).exists():
        files = [folder / WEIGHTS_FILE]
    else:
        raise ValueError(f"{folder} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise ValueError(f"{folder} lacks the shards {missing} that its index lists")
    return files


def from_pretrained(path: str | Path, dtype: torch.dtype | None = None) -> TransformerLM:
    """Load a Llama-family checkpoint folder into a :class:`TransformerLM` (eval mode).

    ``dtype``: the model's dtype (default: float32). Every tensor of the
    model must be in the files, and every tensor in the files must belong
    to the model (a tied ``lm_head.weight`` may be absent); otherwise a
    ValueError names the first ones that do not fit.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a checkpoint folder: it has no config.json")
    config = config_from_hf(json.loads((folder / "config.json").read_text()))
    tensors: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    model = TransformerLM(config)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # the tied head is the embedding matrix
        tensors["lm_head.weight"] = tensors.get("model.embed_tokens.weight")
    expected = model.state_dict()
    missing = [k for k in expected if tensors.get(k) is None]
    unexpected = [k for k in tensors if k not in expected and not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"{folder}: tensors do not fit {config}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k in expected if tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{folder}: {k} has shape {tuple(tensors[k].shape)}, the config needs {tuple(expected[k].shape)}")
    model.load_state_dict({k: tensors[k] for k in expected})
    return model.to(dtype or torch.float32).eval()


def save_pretrained(model: TransformerLM, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a checkpoint folder that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

    ``config.json`` (a ``LlamaForCausalLM`` config) and one ``model.safetensors``
    in ``dtype`` (default: the model's). A tied output head is stored once, as
    Hugging Face does. Refuses (ValueError) a folder that already holds a
    ``config.json`` or weights: nothing is overwritten. Returns the folder.
    """
    if not isinstance(model, TransformerLM):
        raise ValueError(f"model must be a gqa_lib TransformerLM; got {type(model).__name__}")
    folder = Path(path)
    existing = [n for n in ("config.json", WEIGHTS_FILE, INDEX_FILE) if (folder / n).exists()]
    if existing:
        raise ValueError(f"{folder} already holds {existing}; choose an empty folder")
    dtype = dtype or model.lm_head.weight.dtype
    tensors = model.tensors_to_store(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config_to_hf(model.config, dtype), indent=2) + "\n")
    return folder


_KV_PROJECTION = re.compile(r"model\.layers\.\d+\.self_attn\.[kv]_proj\.(weight|bias)")
_ATTENTION_TENSOR = re.compile(r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)")
_INIT_STD = 0.02  # the std of a fresh projection (method="random"), as Llama initialises


def _convert_tensor(name: str, tensor: torch.Tensor, G0: int, G: int, method: str, seed: int) -> torch.Tensor:
    """A K/V projection tensor (G0 heads of rows) rebuilt with G heads by ``method``, in its own dtype."""
    if method == "random":
        generator = torch.Generator().manual_seed(seed + sum(map(ord, name)))  # seeded, one stream per tensor
        rows = tensor.shape[0] // G0 * G
        fresh = torch.randn((rows, *tensor.shape[1:]), generator=generator) * _INIT_STD
        return (fresh if name.endswith("weight") else torch.zeros_like(fresh)).to(tensor.dtype)
    return pool_heads(tensor.float(), G0, G, method).to(tensor.dtype)  # pooled in float32, stored as it was


def _reordered(name: str, tensor: torch.Tensor, orders: list[list[int]], head_dim: int) -> torch.Tensor:
    """An attention tensor with its heads in the layer's new order (Q/K/V rows, O columns); others unchanged."""
    match = _ATTENTION_TENSOR.fullmatch(name)
    if match is None:
        return tensor
    layer, proj, kind = int(match[1]), match[2], match[3]
    rows = head_rows(orders[layer], head_dim)  # (H*D,)
    if proj == "o":
        return tensor[:, rows] if kind == "weight" else tensor  # o_proj reads the heads through its columns
    return tensor[rows]


def resident_bytes() -> int:
    """Bytes of this process's memory resident now (Linux: /proc/self/statm); elsewhere its peak so far.

    The peak (``getrusage``) cannot tell a conversion's memory from what the
    imports before it used, so where the current value can be read it is used.
    """
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def convert_checkpoint(
    src: str | Path, dst: str | Path, n_kv_heads: int, method: str = "mean", seed: int = 0, overwrite: bool = False,
    grouping: str = "contiguous", calibration: torch.Tensor | None = None,
) -> dict:
    """Convert a checkpoint folder's K/V projections to ``n_kv_heads`` heads, shard by shard, into ``dst``.

    Every other tensor is copied unchanged (same dtype, same bytes), shards
    keep their names, ``config.json`` gets ``num_key_value_heads = n_kv_heads``,
    every other file (tokenizer, generation config, ...) is copied, and a
    README.md says what was done. Groups are contiguous, as in
    :func:`gqa_lib.convert_to_gqa`. Only one shard is in memory at a time.
    ``dst`` must not exist unless ``overwrite``; the folder is written under a
    temporary name and renamed at the end, so a failure leaves nothing at ``dst``.
    Returns a report: ``shards``, ``largest_shard_bytes``, ``peak_rss_growth_bytes``
    (the most the process's resident memory rose above its level at the start,
    sampled while each shard is held; see :func:`resident_bytes`), ``seconds``.

    ``grouping="similar"`` (mean or first, multi-head checkpoints) first reads
    the whole model once to compare its heads on ``calibration`` token ids
    (B, T), as :func:`gqa_lib.convert_to_gqa` does, then reorders the heads of
    each layer (Q, K, V rows and O columns, which leaves the multi-head model
    unchanged) while it converts shard by shard; that step needs the model in
    memory, the rest one shard at a time.
    """
    src, dst = Path(src), Path(dst)
    if method not in CONVERSION_METHODS:
        raise ValueError(f"method must be one of {CONVERSION_METHODS}; got {method!r}")
    seed = as_count("seed", seed, minimum=0)
    if not (src / "config.json").is_file():
        raise ValueError(f"{src} is not a checkpoint folder: it has no config.json")
    hf_config = json.loads((src / "config.json").read_text())
    config = config_from_hf(hf_config)
    G0, G = config.n_kv_heads, as_count("n_kv_heads", n_kv_heads)
    if G0 % G:
        raise ValueError(f"n_kv_heads={G} must divide the checkpoint's {G0} KV heads")
    if dst.exists() and not overwrite:
        raise ValueError(f"{dst} exists; choose another destination or pass overwrite=True")
    if dst.resolve() == src.resolve():
        raise ValueError(f"the destination {dst} is the source folder")
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}; got {grouping!r}")
    orders = None
    if grouping == "similar":
        if method == "random" or calibration is None or G0 != config.n_heads:
            raise ValueError("grouping='similar' needs method 'mean' or 'first', calibration token ids, and a "
                             f"multi-head checkpoint; got method={method!r}, calibration "
                             f"{'given' if calibration is not None else 'missing'}, {G0} KV heads for "
                             f"{config.n_heads} query heads")
        orders = similar_orders(from_pretrained(src), calibration, G)
    elif calibration is not None:
        raise ValueError("calibration tokens are only used with grouping='similar'")
    shards = _weight_files(src)
    start, rss_before = time.perf_counter(), resident_bytes()
    rss_peak = rss_before
    partial = dst.with_name(dst.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        sizes = {}
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                metadata = f.metadata() or {"format": "pt"}
                tensors = {}
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    if orders is not None:
                        tensor = _reordered(name, tensor, orders, config.head_dim)
                    if _KV_PROJECTION.fullmatch(name):
                        tensor = _convert_tensor(name, tensor, G0, G, method, seed)
                    tensors[name] = tensor.contiguous()
            save_file(tensors, str(partial / shard.name), metadata=metadata)
            rss_peak = max(rss_peak, resident_bytes())  # the shard, converted, is still held here
            sizes.update({name: t.numel() * t.element_size() for name, t in tensors.items()})
            del tensors
        index = src / INDEX_FILE
        if index.exists():
            data = json.loads(index.read_text())
            data.setdefault("metadata", {})["total_size"] = sum(sizes.values())
            (partial / INDEX_FILE).write_text(json.dumps(data, indent=2) + "\n")
        (partial / "config.json").write_text(json.dumps({**hf_config, "num_key_value_heads": G}, indent=2) + "\n")
        copied = []
        for item in sorted(src.iterdir()):
            if item.is_file() and item.name not in {"config.json", INDEX_FILE, "README.md"} and item not in shards:
                shutil.copy2(item, partial / item.name)
                copied.append(item.name)
        (partial / "README.md").write_text(
            f"# {dst.name}\n\nConverted by gqa_lib from `{src.name}`: the key and value projections of every layer "
            f"went from {G0} to {G} heads by {method!r} over contiguous groups of {G0 // G} heads (the grouped-query "
            f"conversion of Ainslie et al., 2023)"
            + (f", after reordering each layer's heads so that similar heads share a group (orders: {orders})"
               if orders is not None else "")
            + "; every other tensor is unchanged. Uptrain the model before use: a conversion loses quality until "
            "it is trained further.\n"
        )
        if dst.exists():
            shutil.rmtree(dst)
        partial.rename(dst)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {
        "head_orders": orders,
        "shards": len(shards),
        "largest_shard_bytes": max(s.stat().st_size for s in shards),
        "peak_rss_growth_bytes": rss_peak - rss_before,
        "seconds": round(time.perf_counter() - start, 3),
        "copied": copied,
    }


def _read_calibration(path: Path) -> torch.Tensor:
    """Token ids (B, T) from a JSON file holding a list of B lists of T integers."""
    try:
        ids = json.loads(Path(path).read_text())
        tokens = torch.tensor(ids, dtype=torch.long)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"--calibration {path}: expected a JSON list of equal-length lists of token ids ({e})") from None
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise ValueError(f"--calibration {path}: expected a JSON list of equal-length lists of token ids")
    return tokens


def main(argv: list[str] | None = None) -> None:
    """``python -m gqa_lib.recipe.hf convert SRC DST --kv-heads G [--method M] [--grouping G --calibration F] [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="python -m gqa_lib.recipe.hf", description="Hugging Face checkpoints and GQA.")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert a Llama-family checkpoint folder to G KV heads")
    convert.add_argument("src", type=Path, help="the checkpoint folder to convert (config.json + safetensors)")
    convert.add_argument("dst", type=Path, help="the folder to write (must not exist, unless --overwrite)")
    convert.add_argument("--kv-heads", type=int, required=True, help="G, the number of KV heads after conversion")
    convert.add_argument("--method", choices=CONVERSION_METHODS, default="mean", help="how to build a KV head")
    convert.add_argument("--seed", type=int, default=0, help="seed of --method random")
    convert.add_argument("--grouping", choices=GROUPINGS, default="contiguous",
                         help="contiguous (the paper's) or similar (needs --calibration)")
    convert.add_argument("--calibration", type=Path,
                         help="JSON file of token-id lists of equal length, to compare heads on (--grouping similar)")
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    try:
        calibration = _read_calibration(args.calibration) if args.calibration is not None else None
        report = convert_checkpoint(args.src, args.dst, args.kv_heads, args.method, args.seed, args.overwrite,
                                    args.grouping, calibration)
    except ValueError as e:
        parser.error(str(e))
    print(f"converted {args.src} -> {args.dst}: {report['shards']} shard(s), largest {report['largest_shard_bytes']:,} "
          f"bytes; peak memory grew by {report['peak_rss_growth_bytes']:,} bytes; {report['seconds']:.2f} s")


if __name__ == "__main__":
    main()
