"""Closed-loop evaluation of a VLA checkpoint in the simulator (no ROS), expert as upper bound.

    python -m vla_bringup.cli.evaluate --checkpoint DIR --seeds N \\
        [--families pick_place push stack] [--out artifacts] [--workers 2]

For each task family and each of the N held-out seeds (`EVAL_SEED_BASE + i`, far above every
training attempt), the scene of `sample_episode(i, EVAL_SEED_BASE, phrasing, (family,))` is run
closed loop by `sim.demonstrations.run_episode` (record=False): the same skill executor and chunk
scheduler as the ROS graph, with its checks of the fingers (a pick said done with empty fingers
is regrasped, a place said done still holding the object goes on), camera image + measured
joints + skill text in, success judged by `sim.tasks` on the final poses. Two phrasing
conditions per family:
- `train`: the phrasings seen in training (half the skills get the planner's own text, as the
  ROS graph sends it, the others a training template);
- `held_out`: paraphrases never used in training, fed to the policy directly as skill texts.
The phrasing only changes the text: the scene (cubes, colours, target, camera jitter, start pose)
of seed i is the same in both conditions.

The scripted expert runs on the same seeds in the same run. It reads the ground-truth scene and
never the instruction text, so its run of seed i is the same for both phrasings: by default it
runs once per (family, seed) and its result is reported under both (`--expert-per-phrasing`
runs it separately anyway).

`--validation` runs the seeds from `VALIDATION_SEED_BASE` instead: scenes apart from both the
training attempts and the reported evaluation, on which inference settings are chosen (the
planned push place's `push_extra_m`, for one), so that the reported table never tuned anything.

Simulator settings (image size, fps, chunk spacing, camera jitter, start noise, timeouts) come
from the dataset the checkpoint was trained on (`train_log.json` next to the checkpoint), else
from the generator's defaults; `--sim-config JSON` and `--skill-timeout` override them. The
least time between the frames the policy reads is the checkpoint's own `inference_period_s`, as in
the policy node, unless `--inference-period` (or `--sim-config`) says otherwise.

Writes `eval.json` (rates per family x phrasing for policy and expert, counts, seeds, every
episode, wall time, checkpoint hash, machine) and `eval_table.png` into --out. Exit code 0 when it
ran: the numbers are the result, there are no thresholds here. `--workers W` runs W processes,
each with its own PyBullet world, policy and expert, torch on 1 thread.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Optional

from vla_bringup.cli.machine import describe_machine
from vla_bringup.core.skill_executor import RELEASE_CHECK

FAMILY_NAMES = {"pick_place": "pick & place", "push": "push", "stack": "stack"}
PHRASING_NAMES = {"train": "seen phrasings", "held_out": "held-out paraphrases"}

# Per-process state (one PyBullet world per episode, one policy and one expert per process).
_STATE: dict = {}


def checkpoint_hash(folder: str | Path) -> dict:
    folder = Path(folder)
    total = hashlib.sha256()
    files = {}
    for name in ("config.json", "model.safetensors"):
        data = (folder / name).read_bytes()
        files[name] = hashlib.sha256(data).hexdigest()
        total.update(name.encode() + b"\0" + data)
    return {"sha256": total.hexdigest(), "files": files}


def _checkpoint_setting(checkpoint: Path, key: str) -> float:
    """One numeric inference setting of the checkpoint's config (its default without one)."""
    from vla_bringup.policy.vla.config import VLAConfig
    from vla_bringup.policy.vla.model import CONFIG_FILE, load_config
    has_config = (checkpoint / CONFIG_FILE).is_file()
    return float(getattr(load_config(checkpoint) if has_config else VLAConfig(), key))


def sim_settings(checkpoint: Path, overrides: Optional[dict] = None,
                 skill_timeout: Optional[float] = None,
                 seed_base: Optional[int] = None) -> dict:
    """GeneratorConfig fields for evaluation (see the module docstring for where they come from)."""
    from vla_bringup.sim.demonstrations import EVAL_SEED_BASE, GeneratorConfig
    fields = {f.name for f in dataclasses.fields(GeneratorConfig)}
    settings: dict = {}
    source = "generator defaults"
    log_path = checkpoint / "train_log.json"
    if log_path.is_file():
        try:
            stored = json.loads(log_path.read_text()).get("dataset", {}).get("generator_config")
        except json.JSONDecodeError:
            stored = None
        if isinstance(stored, dict):
            settings.update({k: v for k, v in stored.items() if k in fields})
            source = str(log_path)
    period = _checkpoint_setting(checkpoint, "inference_period_s")
    if period:  # the pace the checkpoint asks of the policy node (VLAConfig)
        settings["inference_period_s"] = period
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"unknown simulator setting {key!r}; known: {sorted(fields)}")
        settings[key] = value
    if skill_timeout is not None:
        settings["skill_timeout_s"] = float(skill_timeout)
    # Evaluation: no perturbation of executed chunks, nothing kept, held-out seeds.
    settings.update(perturb_std=0.0, keep_failures=False,
                    seed_base=EVAL_SEED_BASE if seed_base is None else int(seed_base),
                    phrasing="train")
    settings.pop("families", None)
    config = GeneratorConfig(**settings)
    result = dataclasses.asdict(config)
    result["families"] = list(result["families"])
    result["_source"] = source
    return result


def _generator_config(settings: dict):
    """The GeneratorConfig of `sim_settings`' dict (its "_" keys are notes, not fields)."""
    from vla_bringup.sim.demonstrations import GeneratorConfig
    return GeneratorConfig(**{k: v for k, v in settings.items() if not k.startswith("_")})


def _init_worker(checkpoint: str, settings: dict, device: str, need_policy: bool,
                 regrasp_attempts: int = 0, release_check: bool = RELEASE_CHECK) -> None:
    import torch
    torch.set_num_threads(1)
    from vla_bringup.core.skill_executor import finger_checks
    from vla_bringup.policy.scripted_expert import ScriptedExpert
    config = _generator_config(settings)
    _STATE.clear()
    _STATE["config"] = config
    _STATE["grasp"], _STATE["release"] = finger_checks(regrasp_attempts, release_check)
    _STATE["expert"] = ScriptedExpert(config.chunk_horizon, config.chunk_dt, config.max_speed)
    if need_policy:
        from vla_bringup.policy.vla.backend import VLAPolicy
        _STATE["policy"] = VLAPolicy(checkpoint, device=device, num_threads=1)


def _run_job(job: tuple[str, str, str, int]) -> dict:
    from vla_bringup.sim.demonstrations import run_episode, sample_episode
    backend_name, family, phrasing, index = job
    config = _STATE["config"]
    spec = sample_episode(index, config.seed_base, "train" if phrasing == "any" else phrasing,
                          (family,))
    backend = _STATE["policy" if backend_name == "policy" else "expert"]
    started = time.perf_counter()
    try:
        data = run_episode(spec, config, backend, record=False, grasp=_STATE["grasp"],
                           release_check=_STATE["release"])
        success, error, frames = bool(data.success), data.error, data.length
        regrasps, held_dones = data.regrasps, data.dones_while_holding
        task_met, measures = data.task_met_at_failure, data.measures
    except Exception as exc:  # noqa: BLE001 - an episode that crashes counts as a failure
        success, error, frames = False, f"crash {type(exc).__name__}: {exc}", 0
        task_met, measures, regrasps, held_dones = None, {}, 0, 0
    return {"backend": backend_name, "family": family, "phrasing": phrasing,
            "index": index, "seed": spec.seed, "success": success, "frames": frames,
            "seconds": round(time.perf_counter() - started, 3), "error": error[:300],
            "instruction": spec.instruction, "skills": [s.instruction for s in spec.skills],
            "crashed": error.startswith("crash "), "task_met_at_failure": task_met,
            "measures": {k: round(v, 4) for k, v in measures.items()}, "regrasps": regrasps,
            "dones_while_holding": held_dones}


def _rate(episodes: list[dict]) -> dict:
    successes = sum(e["success"] for e in episodes)
    count = len(episodes)
    return {"success_rate": successes / count if count else None, "successes": successes,
            "episodes": count, "failures": failure_kinds(episodes),
            "failure_measures_median": failure_measures(episodes)}


def failure_measures(episodes: list[dict]) -> dict:
    """Median of each task measure (sim.tasks.task_measures, m) over the failed episodes that
    have them: a near miss (pushed 7 cm of 8) reads differently from a wrong move."""
    import numpy as np
    failed = [e.get("measures") or {} for e in episodes if not e["success"]]
    keys = sorted({k for m in failed for k in m})
    return {k: round(float(np.median([m[k] for m in failed if k in m])), 4) for k in keys}


def failure_kinds(episodes: list[dict]) -> dict:
    """Failed episodes by kind: a skill timed out or was stopped with the task's check already
    holding ("task_met_not_done": the policy did the task and never said "done"), or without
    it ("skill_failed"); every skill said done and the check failed ("task_check"); the episode
    raised ("crashed")."""
    kinds = {"task_met_not_done": 0, "skill_failed": 0, "task_check": 0, "crashed": 0}
    for episode in episodes:
        if episode["success"]:
            continue
        if episode.get("crashed"):
            kinds["crashed"] += 1
        elif episode.get("task_met_at_failure") is not None:
            kinds["task_met_not_done" if episode["task_met_at_failure"] else "skill_failed"] += 1
        else:
            kinds["task_check"] += 1
    return kinds


def summarise(episodes: list[dict], families: list[str], phrasings: list[str]) -> dict:
    results: dict = {}
    for family in families:
        results[family] = {}
        for phrasing in phrasings:
            policy = [e for e in episodes if e["backend"] == "policy"
                      and e["family"] == family and e["phrasing"] == phrasing]
            expert = [e for e in episodes if e["backend"] == "expert"
                      and e["family"] == family and e["phrasing"] in (phrasing, "any")]
            results[family][phrasing] = {"policy": _rate(policy), "expert": _rate(expert)}
    results["all"] = {}
    for phrasing in phrasings:
        results["all"][phrasing] = {
            backend: _rate([e for e in episodes if e["backend"] == backend and
                            e["phrasing"] in ((phrasing, "any") if backend == "expert"
                                              else (phrasing,))])
            for backend in ("policy", "expert")}
    return results


def _cell(rate: dict) -> str:
    if not rate["episodes"]:
        return "-"
    return f"{100 * rate['success_rate']:.0f}% ({rate['successes']}/{rate['episodes']})"


def _expert_ran(results: dict, phrasings: list[str]) -> bool:
    """False for a run with --no-expert: the table then has no expert columns."""
    return any(results["all"][p]["expert"]["episodes"] for p in phrasings)


def table_rows(results: dict, families: list[str], phrasings: list[str]) -> tuple[list, list]:
    """The table's header and rows; without expert episodes (--no-expert), no expert columns."""
    backends = ["policy"] + (["expert"] if _expert_ran(results, phrasings) else [])
    columns = [f"{backend}, {PHRASING_NAMES[p]}" for backend in backends for p in phrasings]
    rows = []
    for family in [*families, "all"]:
        cells = [_cell(results[family][p][backend]) for backend in backends for p in phrasings]
        rows.append([FAMILY_NAMES.get(family, family), *cells])
    return ["task", *columns], rows


def _latency_note(report: dict) -> str:
    sim = report.get("sim_config", {})
    latency, period = (float(sim.get(k, 0.0)) for k in ("inference_latency_s",
                                                         "inference_period_s"))
    lead = float(report.get("checkpoint", {}).get("action_lead_s", 0.0))
    return ((f"; chunks arrive {latency:.2f} s after their frame" if latency > 0 else "")
            + (f"; a frame read every {period:.2f} s" if period > 0 else "")
            + (f"; chunks run from {lead:.2f} s after their frame" if lead > latency else ""))


def plot_table(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    header, rows = table_rows(report["results"], report["families"], report["phrasings"])
    figure, axis = plt.subplots(figsize=(2.0 + 2.2 * (len(header) - 1), 0.9 + 0.4 * len(rows)),
                                dpi=120)
    axis.axis("off")
    table = axis.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.5)
    for (row, _), cell in table.get_celld().items():
        if row == 0 or row == len(rows):
            cell.set_text_props(weight="bold")
        if row == 0:
            cell.set_facecolor("#dde4ee")
    seeds = report["seeds"]
    kind = "validation" if seeds.get("validation") else "held-out"
    upper_bound = "expert = scripted upper bound, same seeds"
    title = (f"Closed-loop success, {report['checkpoint']['name']} "
             f"({report['checkpoint']['sha256'][:12]}), {seeds['count']} {kind} seeds per family "
             f"from {seeds['base']}; " + (upper_bound if _expert_ran(report["results"],
                                                                     report["phrasings"])
                                          else "expert not run")
             + _latency_note(report))
    # wrapped to the figure's width (about 13 characters per inch at this font size)
    axis.set_title(textwrap.fill(title, int(13 * figure.get_figwidth())), fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def evaluate(checkpoint: str | Path, seeds: int, families: list[str],
             phrasings: list[str], out: str | Path, workers: int = 1, device: str = "cpu",
             sim_overrides: Optional[dict] = None, skill_timeout: Optional[float] = None,
             expert_per_phrasing: bool = False, progress: bool = True, log=print,
             validation: bool = False, regrasp_attempts: Optional[int] = None,
             release_check: bool = RELEASE_CHECK, expert: bool = True) -> dict:
    """`expert`: also run the scripted expert on the same seeds (the table's upper bound;
    False for quicker comparisons of checkpoints, which then have no expert columns).
    `regrasp_attempts`: the skill controller's regrasps after a pick said done with empty
    fingers (None: its default, GraspCheck; negative: no check at all). `release_check`: its
    check that a place said done has let go of the object (the default, as in the graph)."""
    from vla_bringup.sim.demonstrations import (EVAL_SEED_BASE, VALIDATION_SEED_BASE,
                                                episode_timing)
    from vla_bringup.core.skill_executor import GraspCheck
    seed_base = VALIDATION_SEED_BASE if validation else EVAL_SEED_BASE
    if regrasp_attempts is None:
        regrasp_attempts = GraspCheck.attempts
    checkpoint, out = Path(checkpoint), Path(out)
    if seeds < 1 or workers < 1:
        raise ValueError("--seeds and --workers must be >= 1")
    if expert_per_phrasing and not expert:
        raise ValueError("--expert-per-phrasing and --no-expert contradict each other")
    for name in ("config.json", "model.safetensors"):
        if not (checkpoint / name).is_file():
            raise FileNotFoundError(
                f"{checkpoint} has no {name}; is it a checkpoint folder? (train one as "
                "docs/training.md shows and pass --checkpoint, or ARGS=\"--checkpoint DIR\" "
                "to make eval)")
    settings = sim_settings(checkpoint, sim_overrides, skill_timeout, seed_base)
    # The expert never reads the text: once per family and seed ("any") unless asked per phrasing.
    expert_phrasings = [] if not expert else phrasings if expert_per_phrasing else ["any"]
    if not expert:
        expert_runs = "not run (--no-expert)"
    elif expert_per_phrasing:
        expert_runs = "per phrasing"
    else:
        expert_runs = ("once per family and seed, reported under every phrasing (it never reads "
                       "the instruction text)")
    jobs: list[tuple[str, str, str, int]] = []
    for index in range(seeds):
        for family in families:
            for phrasing in phrasings:
                jobs.append(("policy", family, phrasing, index))
            for phrasing in expert_phrasings:
                jobs.append(("expert", family, phrasing, index))
    started = time.perf_counter()
    episodes: list[dict] = []
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(jobs), desc="episodes", unit="ep", dynamic_ncols=True,
                       file=sys.stderr)
        except ImportError:
            bar = None

    def handle(result: dict) -> None:
        episodes.append(result)
        if bar is not None:
            done = [e for e in episodes if e["backend"] == "policy"]
            expert = [e for e in episodes if e["backend"] == "expert"]
            bar.set_postfix_str(
                f"policy {sum(e['success'] for e in done)}/{len(done)}, expert "
                f"{sum(e['success'] for e in expert)}/{len(expert)}", refresh=False)
            bar.update(1)
        elif progress:
            print(f"[evaluate] {len(episodes)}/{len(jobs)} {result['backend']} "
                  f"{result['family']} seed {result['seed']}: "
                  f"{'success' if result['success'] else 'failure'}", file=sys.stderr)
    init_args = (str(checkpoint), settings, device, True, int(regrasp_attempts),
                 bool(release_check))
    try:
        if workers == 1:
            import torch
            threads = torch.get_num_threads()
            try:
                _init_worker(*init_args)
                for job in jobs:
                    handle(_run_job(job))
            finally:
                torch.set_num_threads(threads)
                _STATE.clear()
        else:
            import multiprocessing
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
                for result in pool.imap_unordered(_run_job, jobs, chunksize=1):
                    handle(result)
                # Let the workers exit on their own: the context manager's terminate() kills
                # them mid-shutdown and leaves their semaphores to the resource tracker.
                pool.close()
                pool.join()
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - started
    order = {job: i for i, job in enumerate(jobs)}
    episodes.sort(key=lambda e: order[(e["backend"], e["family"], e["phrasing"], e["index"])])
    results = summarise(episodes, families, phrasings)

    def timing(backend: str) -> dict:
        chosen = [e for e in episodes if e["backend"] == backend]
        seconds = sum(e["seconds"] for e in chosen)
        frames = sum(e["frames"] for e in chosen)
        return {"episodes": len(chosen), "seconds_per_episode": seconds / len(chosen)
                if chosen else None, "ms_per_frame": 1e3 * seconds / frames if frames else None,
                "frames_per_episode": frames / len(chosen) if chosen else None}
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": {"path": str(checkpoint.resolve()), "name": checkpoint.name,
                       **checkpoint_hash(checkpoint),
                       "action_lead_s": _checkpoint_setting(checkpoint, "action_lead_s")},
        "families": list(families), "phrasings": list(phrasings),
        "seeds": {"base": seed_base, "count": seeds, "validation": validation,
                  "list": [seed_base + i for i in range(seeds)],
                  "note": "seed i of every family and phrasing is scene seed base + i"},
        "results": results,
        "expert": {"runs": expert_runs},
        "crashed_episodes": sum(e["crashed"] for e in episodes),
        "timing": {"wall_s": round(wall, 3), "workers": workers, "device": device,
                   "policy": timing("policy"), "expert": timing("expert"),
                   "note": "seconds per episode are measured inside the workers (with "
                           f"{workers} worker(s) sharing the machine)"},
        "sim_config": settings,
        "regrasp_attempts": int(regrasp_attempts),
        "release_check": bool(release_check),
        "skill_timing": dataclasses.asdict(episode_timing(_generator_config(settings))),
        "machine": describe_machine(),
        "episodes": episodes,
    }
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / ".eval.json.tmp"
    temporary.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(temporary, out / "eval.json")
    plot_table(report, out / "eval_table.png")
    header, rows = table_rows(results, families, phrasings)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        log("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    log(f"[evaluate] {len(episodes)} episodes in {wall:.1f} s with {workers} worker(s); "
        f"{out / 'eval.json'}, {out / 'eval_table.png'}")
    for family in families:  # the cells' counts, summed over phrasings
        cells = [results[family][phrasing]["policy"]["failures"] for phrasing in phrasings]
        kinds = {kind: sum(cell[kind] for cell in cells) for kind in cells[0]}
        if any(kinds.values()):
            log(f"[evaluate] {family} policy failures: " + ", ".join(
                f"{count} {kind.replace('_', ' ')}" for kind, count in kinds.items() if count))
    if report["crashed_episodes"]:
        log(f"[evaluate] WARNING: {report['crashed_episodes']} episodes crashed (see "
            "eval.json episodes[].error); they count as failures")
    return report


def main(argv=None) -> int:
    from vla_bringup.sim.demonstrations import PHRASINGS
    from vla_bringup.sim.tasks import FAMILIES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="",
                        help="checkpoint folder (default: the committed one)")
    parser.add_argument("--seeds", type=int, required=True,
                        help="held-out (or, with --validation, validation) seeds per family")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--phrasings", nargs="+", default=list(PHRASINGS), choices=PHRASINGS)
    parser.add_argument("--out", default="artifacts", help="folder for eval.json + the table")
    parser.add_argument("--workers", type=int, default=1, help="processes (each ~1 core)")
    parser.add_argument("--device", default="cpu", help="policy device: cpu, cuda, auto")
    parser.add_argument("--sim-config", help="JSON object of GeneratorConfig overrides")
    parser.add_argument("--skill-timeout", type=float, help="s per skill before it fails")
    parser.add_argument("--inference-latency", type=float,
                        help="s of simulated time from a frame to its chunk's arrival, as in "
                             "the live graph (default 0: the simulator waits for the policy)")
    parser.add_argument("--inference-period", type=float,
                        help="s of simulated time between the frames the policy reads, as the "
                             "policy node's inference_rate_hz on a fast device (default 0: "
                             "every frame)")
    parser.add_argument("--expert-per-phrasing", action="store_true")
    parser.add_argument("--no-expert", action="store_true",
                        help="skip the scripted expert (no upper bound in the table; for "
                             "quicker comparisons of checkpoints)")
    parser.add_argument("--validation", action="store_true",
                        help="run the validation seeds (for choosing settings), not the "
                             "evaluation's")
    parser.add_argument("--regrasp-attempts", type=int,
                        help="regrasps after a pick says done with empty fingers, as the skill "
                             "controller's regrasp_attempts (default: its default; -1: no "
                             "check, the pick's done is taken as it comes)")
    parser.add_argument("--no-release-check", action="store_true",
                        help="take a place's done as it comes, even with the object still "
                             "between the fingers (the skill controller's release_check false; "
                             "tables before the twenty-eighth session were measured so)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint
    if not checkpoint:
        from vla_bringup.policy.vla.backend import DEFAULT_CHECKPOINT
        checkpoint = DEFAULT_CHECKPOINT
    try:
        overrides = json.loads(args.sim_config) if args.sim_config else {}
        if not isinstance(overrides, dict):
            raise ValueError(f"--sim-config must be a JSON object, got {args.sim_config!r}")
        if args.inference_latency is not None:
            overrides["inference_latency_s"] = args.inference_latency
        if args.inference_period is not None:
            overrides["inference_period_s"] = args.inference_period
        evaluate(checkpoint, args.seeds, list(dict.fromkeys(args.families)),
                 list(dict.fromkeys(args.phrasings)), args.out, args.workers, args.device,
                 overrides, args.skill_timeout, args.expert_per_phrasing,
                 progress=not args.no_progress, validation=args.validation,
                 regrasp_attempts=args.regrasp_attempts,
                 release_check=not args.no_release_check, expert=not args.no_expert)
    except (FileNotFoundError, ValueError) as error:
        print(f"[evaluate] ERROR: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
