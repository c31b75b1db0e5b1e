"""Make a trained checkpoint fit to ship: half-precision weights and a short training log.

    python -m vla_bringup.cli.export_checkpoint --checkpoint RUN_DIR \\
        --out src/vla_bringup/policy/vla/checkpoints/default [--dtype float16]

Writes `config.json`, `model.safetensors` (loaded and saved again: only safetensors in, only
safetensors out) and `train_log.json` with every entry of the trainer's log except the per-step
loss history, which is thinned to one entry per 100 steps (the validation history and the
dataset's generator settings stay: `evaluate` reads the simulator settings from there). The
policy loads fp16 weights into fp32 on the CPU and runs them as fp16 on a GPU.
`--set KEY=VALUE` changes a setting that only inference reads (INFERENCE_SETTINGS: the done
threshold, ensembling, where a push's or a cube's place comes from; config.py says what each
does), so the weights stay as they are. `--data DATASET...` measures the push offsets that
`push_place=planned` needs on those datasets' push episodes, for a checkpoint trained before the
trainer wrote them. What an export changed is recorded in `train_log.json` under
`exported_from` (an export of an export keeps the earlier record under `previous`).
Exit code 0 on success, 2 when the input is not a checkpoint or the offsets cannot be found.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

HISTORY_EVERY = 100  # steps between the kept entries of the per-step loss history
# Config fields that only the backend reads at inference: changing them needs no retraining.
INFERENCE_SETTINGS = ("done_threshold", "temporal_ensemble", "push_place", "push_extra_m",
                      "cube_place", "cube_place_extra_ratio", "cube_place_view",
                      "place_target", "inference_period_s", "action_lead_s")


def export(checkpoint: Path, out: Path, dtype: str = "float16",
           settings: Optional[dict] = None, data: Sequence[str] = ()) -> dict:
    import torch
    from vla_bringup.policy.vla.model import checkpoint_size, load_checkpoint
    model = load_checkpoint(checkpoint, "cpu")
    model.config = with_inference_settings(model.config, settings or {}, data)
    out.mkdir(parents=True, exist_ok=True)
    model.save_checkpoint(out, getattr(torch, dtype))
    log_path = checkpoint / "train_log.json"
    if log_path.is_file():
        log = json.loads(log_path.read_text())
        log["history"] = [h for h in log.get("history", [])
                          if h.get("step", 0) % HISTORY_EVERY == 0]
        record = {"path": str(checkpoint.resolve()), "dtype": dtype,
                  "settings": dict(settings or {}),
                  "push_offsets_from": [str(Path(d).resolve()) for d in data]}
        if "exported_from" in log:  # an export of an export: keep the earlier record
            record["previous"] = log["exported_from"]
        log["exported_from"] = record
        (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return {"out": str(out), "bytes": checkpoint_size(out),
            "parameters": model.parameter_counts()}


def with_inference_settings(config, settings: dict, data: Sequence[str] = ()):
    """`config` with `settings` (INFERENCE_SETTINGS only) and, from `data`, push offsets."""
    unknown = sorted(set(settings) - set(INFERENCE_SETTINGS))
    if unknown:
        raise ValueError(f"{unknown} cannot be set at export (only {list(INFERENCE_SETTINGS)}: "
                         "the others change what the weights mean)")
    changes = dict(settings)
    if data:
        from vla_bringup.cli.train_data import load_datasets, push_offsets
        demos = load_datasets(data)
        changes["push_offsets"] = push_offsets(demos, range(len(demos.episodes)))
        if not changes["push_offsets"]:  # never drop offsets the checkpoint has for nothing
            raise ValueError(f"no push episodes with position columns in {list(data)}")
    config = dataclasses.replace(config, **changes)  # the config checks each value
    if config.push_place == "planned" and not config.push_offsets:
        raise ValueError("push_place 'planned' needs push offsets: the checkpoint has none, so "
                         "name datasets with push episodes and position columns (--data)")
    return config


def _setting(text: str) -> tuple[str, object]:
    """"KEY=VALUE" -> (KEY, VALUE as JSON, else the text itself)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="trained checkpoint folder")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--set", type=_setting, action="append", default=[],
                        metavar="KEY=VALUE", help="an inference-only setting, e.g. "
                        "push_place=planned (repeatable)")
    parser.add_argument("--data", nargs="+", default=(),
                        help="datasets to measure the push offsets on (for push_place=planned)")
    args = parser.parse_args(argv)
    try:
        summary = export(Path(args.checkpoint), Path(args.out), args.dtype, dict(args.set),
                         args.data)
    except (FileNotFoundError, ValueError, TypeError) as error:  # TypeError: a --set's type
        print(f"export_checkpoint: {error}", file=sys.stderr)
        return 2
    print(f"[export] {summary['out']}: {summary['bytes'] / 2 ** 20:.1f} MiB, "
          f"{summary['parameters']['trainable']:,} trained parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
