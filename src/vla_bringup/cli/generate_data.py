"""Generate scripted-expert demonstrations in the LeRobot layout (no ROS needed).

    python -m vla_bringup.cli.generate_data --out data/demos --episodes 300 [--workers 2]

Re-running the same command resumes: complete episodes are kept, a half-written one is dropped
and redone. See vla_bringup/sim/demonstrations.py for the layout and what each frame holds.
"""
from __future__ import annotations

import argparse
import json
import sys

from vla_bringup.sim.demonstrations import GeneratorConfig, generate
from vla_bringup.sim.tasks import FAMILIES


def main(argv=None) -> int:
    defaults = GeneratorConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset folder (created or resumed)")
    parser.add_argument("--episodes", type=int, required=True,
                        help="successful episodes wanted in the folder in total")
    parser.add_argument("--workers", type=int, default=1, help="processes (each ~1 core)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--fps", type=float, default=defaults.fps)
    parser.add_argument("--chunk-horizon", type=int, default=defaults.chunk_horizon)
    parser.add_argument("--chunk-dt", type=float, default=defaults.chunk_dt)
    parser.add_argument("--seed-base", type=int, default=defaults.seed_base,
                        help="attempt j uses scene seed seed_base + j (evaluation uses >= 1e6)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--phrasing", default=defaults.phrasing, choices=("train", "held_out"))
    parser.add_argument("--camera-jitter", type=float, default=defaults.camera_jitter_m,
                        help="m, random camera offset per scene")
    parser.add_argument("--start-joint-noise", type=float, default=defaults.start_joint_noise)
    parser.add_argument("--done-hold-frames", type=int, default=defaults.done_hold_frames)
    parser.add_argument("--perturb-std", type=float, default=defaults.perturb_std,
                        help="rad, noise on executed chunks (labels stay the expert's)")
    parser.add_argument("--keep-failures", action="store_true")
    parser.add_argument("--max-attempts", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.episodes < 0 or args.workers < 1:
        parser.error("--episodes must be >= 0 and --workers >= 1")
    config = GeneratorConfig(
        image_size=args.image_size, fps=args.fps, chunk_horizon=args.chunk_horizon,
        chunk_dt=args.chunk_dt, seed_base=args.seed_base, families=tuple(args.families),
        phrasing=args.phrasing, camera_jitter_m=args.camera_jitter,
        start_joint_noise=args.start_joint_noise, done_hold_frames=args.done_hold_frames,
        perturb_std=args.perturb_std, keep_failures=args.keep_failures)
    summary = generate(args.out, args.episodes, config, workers=args.workers,
                       progress=not args.no_progress, max_attempts=args.max_attempts)
    print(json.dumps(summary))
    return 0 if summary["episodes"] >= args.episodes else 1


if __name__ == "__main__":
    sys.exit(main())
