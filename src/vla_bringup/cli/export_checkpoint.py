"""Make a trained checkpoint fit to ship: half-precision weights and a short training log.

    python -m vla_bringup.cli.export_checkpoint --checkpoint RUN_DIR \\
        --out src/vla_bringup/policy/vla/checkpoints/default [--dtype float16]

Writes `config.json`, `model.safetensors` (loaded and saved again: only safetensors in, only
safetensors out) and `train_log.json` with every entry of the trainer's log except the per-step
loss history, which is thinned to one entry per 100 steps (the validation history and the
dataset's generator settings stay: `evaluate` reads the simulator settings from there). The
policy loads fp16 weights into fp32 on the CPU and runs them as fp16 on a GPU.
Exit code 0 on success, 2 when the input is not a checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HISTORY_EVERY = 100  # steps between the kept entries of the per-step loss history


def export(checkpoint: Path, out: Path, dtype: str = "float16") -> dict:
    import torch
    from vla_bringup.policy.vla.model import checkpoint_size, load_checkpoint
    model = load_checkpoint(checkpoint, "cpu")
    out.mkdir(parents=True, exist_ok=True)
    model.save_checkpoint(out, getattr(torch, dtype))
    log_path = checkpoint / "train_log.json"
    if log_path.is_file():
        log = json.loads(log_path.read_text())
        log["history"] = [h for h in log.get("history", [])
                          if h.get("step", 0) % HISTORY_EVERY == 0]
        log["exported_from"] = {"path": str(checkpoint.resolve()), "dtype": dtype}
        (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return {"out": str(out), "bytes": checkpoint_size(out),
            "parameters": model.parameter_counts()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="trained checkpoint folder")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    args = parser.parse_args(argv)
    try:
        summary = export(Path(args.checkpoint), Path(args.out), args.dtype)
    except (FileNotFoundError, ValueError) as error:
        print(f"export_checkpoint: {error}", file=sys.stderr)
        return 2
    print(f"[export] {summary['out']}: {summary['bytes'] / 2 ** 20:.1f} MiB, "
          f"{summary['parameters']['trainable']:,} trained parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
