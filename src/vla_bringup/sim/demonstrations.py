"""Scripted-expert demonstrations, recorded in the LeRobot dataset layout (pure PyBullet, no ROS).

Each attempt j builds a scene from seed `seed_base + j`: 3 or 4 cubes whose colours are drawn
among red / green / blue / yellow (the ones not moved are distractors), tray jitter, camera
jitter (`camera_jitter_m`), a slightly perturbed start pose of the arm, a task family (round
robin over pick_place / push / stack) and its instruction phrasings. The expert closes the loop
the way the ROS graph does: every 1/fps s it gets the measured joints (and, being privileged, the
ground-truth scene), returns a chunk, and `core.skill_executor.SkillExecutor` (the skill
controller's own `ChunkScheduler` inside) turns the chunks into the joint targets of every
physics step; a skill ends at the first chunk flagged `skill_done`, as in the graph.
Only episodes whose task succeeds are kept (unless `keep_failures`); failed attempts are logged.

Layout (LeRobot v2.1 style; `images/` holds the frames as PNG files, not videos):

    meta/info.json        features, fps, totals, paths, and the generator's settings
    meta/episodes.jsonl   one line per episode: index, tasks, length, instruction, family, seed ...
    meta/tasks.jsonl      {"task_index", "task"}: every skill instruction text seen
    data/chunk-000/episode_000000.parquet   one row per frame (10 Hz), columns in info.json
    images/observation.image/episode_000000/frame_000000.png   HxWx3 RGB, one per row

Per frame: the camera image, `observation.state` (9 joints, rad / m), the skill instruction
(`instruction`, `task_index`), the expert's whole chunk `action.chunk` (H x 9 absolute joint
targets, row k due (k + 1) * chunk_dt after the frame) and its first row `action`, `skill_done`,
`progress`, plus `privileged.*` ground truth (for auxiliary losses or analysis, never as input).

Crash safety: an episode's frames go to a temporary folder and its parquet to a temporary file,
both renamed when complete (the parquet last: it is the commit); meta files are rewritten
through temporary files after each episode. On start the writer rebuilds meta from the parquet
files (each carries its episode record in its schema metadata) and deletes leftovers, so a
re-run resumes after the last complete episode and never duplicates one.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Optional, Sequence

import numpy as np

from vla_bringup.core.instruction import plan
from vla_bringup.core.skill_executor import (GraspCheck, SkillExecutor, SkillState, SkillTiming,
                                             grasp_check_for, release_check_for)
from vla_bringup.core.chunk_schedule import TimedChunk, advance_rows, lead_shift
from vla_bringup.policy.base import Observation, PolicyBackend, SkillSpec
from vla_bringup.policy.scripted_expert import ScriptedExpert
from vla_bringup.sim.kinematics import FINGER_OPEN, HOME_ARM, JOINT_NAMES
from vla_bringup.sim.tasks import (FAMILIES, PUSH_DIRECTIONS, TaskSpec, task_measures,
                                   task_succeeded)
from vla_bringup.sim.world import TabletopWorld

COLORS = ("red", "green", "blue", "yellow")
EVAL_SEED_BASE = 1_000_000  # evaluation seeds start here; training attempts stay far below
VALIDATION_SEED_BASE = 3_000_000  # seeds for choosing inference settings, apart from both
PHRASINGS = ("train", "held_out")
# What a user says. {c}: the cube to move, {d}: the cube to stack on, {dir}: left / right.
# Every one must parse with core.instruction.plan into its family (a unit test checks).
TASK_TEMPLATES = {
    "train": {
        "pick_place": ["put the {c} cube in the tray", "place the {c} block into the tray",
                       "pick up the {c} cube and put it in the tray",
                       "move the {c} cube to the tray",
                       "drop the {c} block in the bin", "transfer the {c} cube into the container"],
        "push": ["push the {c} cube to the {dir}", "slide the {c} block {dir}",
                 "nudge the {c} cube to the {dir}", "move the {c} cube to the {dir}"],
        "stack": ["stack the {c} cube on the {d} cube", "put the {c} block on top of the {d} block",
                  "place the {c} cube onto the {d} cube", "pile the {c} block on the {d} one"],
    },
    "held_out": {
        "pick_place": ["carry the {c} brick over to the basket",
                       "get the {c} box and set it inside the bin"],
        "push": ["shove the {c} brick toward the {dir}", "poke the {c} box {dir}wards"],
        "stack": ["set the {c} box atop the {d} box", "lift the {c} brick onto the {d} brick"],
    },
}
# What the policy is conditioned on, per skill. The planner's own text (core.instruction) is
# used for a `canonical_fraction` of training skills, as that is what the ROS graph sends.
SKILL_TEMPLATES = {
    "train": {
        "pick": ["pick up the {c} cube", "grasp the {c} block", "lift the {c} cube",
                 "take the {c} cube", "grab the {c} block", "pick the {c} cube up"],
        "place_tray": ["place the {c} cube in the tray", "put the {c} block in the tray",
                       "drop the {c} cube into the tray", "put it in the tray",
                       "release the {c} cube into the bin"],
        "place_cube": ["place the {c} cube on the {d} cube",
                       "put the {c} block on top of the {d} block",
                       "stack it on the {d} cube", "set the {c} cube onto the {d} one"],
        "push": ["push the {c} cube to the {dir}", "slide the {c} block to the {dir}",
                 "nudge the {c} cube {dir}", "shove the {c} block towards the {dir}"],
    },
    "held_out": {
        "pick": ["seize the {c} box", "raise the {c} brick from the table"],
        "place_tray": ["deposit the {c} brick inside the container",
                       "lower the {c} box into the basket"],
        "place_cube": ["rest the {c} brick atop the {d} brick", "lay the {c} box over the {d} box"],
        "push": ["sweep the {c} box over to the {dir} side", "poke the {c} brick toward the {dir}"],
    },
}


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    attempt: int
    seed: int
    family: str
    colors: tuple[str, ...]  # scene cubes, in world order
    target: str  # e.g. "red_cube"
    destination: str  # "tray" | "left" | "right" | "<color>_cube"
    instruction: str  # task-level text, as a user would say it
    phrasing: str
    skills: tuple[SkillSpec, ...]


def _skill_key(skill: str, destination: str) -> str:
    if skill == "place":
        return "place_tray" if destination == "tray" else "place_cube"
    return skill


def sample_episode(attempt: int, seed_base: int = 0, phrasing: str = "train",
                   families: Sequence[str] = FAMILIES,
                   canonical_fraction: float = 0.5) -> EpisodeSpec:
    """The scene, task and phrasings of attempt `attempt` (deterministic)."""
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}")
    seed = int(seed_base) + int(attempt)
    rng = np.random.default_rng([seed, 7919])  # a stream apart from the world's own seed use
    family = families[attempt % len(families)]
    count = int(rng.integers(3, len(COLORS) + 1))
    colors = tuple(str(c) for c in rng.permutation(COLORS)[:count])
    target = str(rng.choice(colors))
    fields = {"c": target, "d": "", "dir": ""}
    if family == "pick_place":
        destination = "tray"
    elif family == "push":
        destination = fields["dir"] = str(rng.choice(sorted(PUSH_DIRECTIONS)))
    else:
        fields["d"] = str(rng.choice([c for c in colors if c != target]))
        destination = f"{fields['d']}_cube"
    text = str(rng.choice(TASK_TEMPLATES[phrasing][family])).format(**fields)
    task_plan = plan(text)
    if (task_plan.family, task_plan.target, task_plan.destination) != (
            family, f"{target}_cube", destination):
        raise ValueError(f"template {text!r} plans as {task_plan.family} {task_plan.target} "
                         f"{task_plan.destination}, not {family} {target} {destination}")
    skills = []
    for index, planned in enumerate(task_plan.skills):
        key = _skill_key(planned.skill, planned.destination)
        if phrasing == "train" and rng.random() < canonical_fraction:
            skill_text = planned.instruction
        else:
            skill_text = str(rng.choice(SKILL_TEMPLATES[phrasing][key])).format(**fields)
        skills.append(SkillSpec(f"s{seed}-{index}", planned.skill, skill_text,
                                planned.target_object, planned.destination))
    return EpisodeSpec(int(attempt), seed, family, colors, f"{target}_cube", destination, text,
                       phrasing, tuple(skills))


@dataclasses.dataclass
class GeneratorConfig:
    image_size: int = 224
    fps: float = 10.0
    chunk_horizon: int = 16
    chunk_dt: float = 0.1
    max_speed: float = 0.25  # m/s, the expert's cap
    camera_jitter_m: float = 0.01
    start_joint_noise: float = 0.03  # rad (std) on the arm's home pose
    skill_timeout_s: float = 20.0
    done_hold_frames: int = 2  # frames still recorded (arm held) after the skill's done frame
    settle_steps: int = 48  # physics steps before judging success
    perturb_std: float = 0.0  # rad: offset added to executed chunks (labels stay clean), DART
    keep_failures: bool = False
    seed_base: int = 0
    phrasing: str = "train"
    canonical_fraction: float = 0.5
    families: tuple[str, ...] = FAMILIES
    png_compress_level: int = 1
    # s of simulated time between the frame a chunk is computed from and its arrival at the
    # executor; the policy reads no new frame meanwhile. 0 (data generation, the default
    # evaluation): the simulator waits for the policy. The live graph has no such pause: a chunk
    # arrives about 0.2-0.3 s after its frame with the scripted expert and about 0.5 s with the
    # learned policy on a 2-core VM (README); `make eval` uses 0.25 s.
    inference_latency_s: float = 0.0
    # s of simulated time from one frame the policy reads to the next (0: every frame, when it
    # is not busy). The live graph's policy node `inference_rate_hz` on a device fast enough
    # that the latency is negligible: a chunk then applies at once but frames in between are
    # not read.
    inference_period_s: float = 0.0

    def __post_init__(self) -> None:
        self.families = tuple(self.families)
        for name in ("inference_latency_s", "inference_period_s"):
            if not 0.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [0, 2] s, got {getattr(self, name)!r}")
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise ValueError(f"families must be among {FAMILIES}")
        if self.image_size < 32 or self.fps <= 0 or self.chunk_horizon < 1 or self.chunk_dt <= 0:
            raise ValueError("image_size >= 32, fps > 0, chunk_horizon >= 1, chunk_dt > 0")
        if self.phrasing not in PHRASINGS:
            raise ValueError(f"phrasing must be one of {PHRASINGS}")

    def stored(self) -> dict:
        """All settings, as info.json stores them (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    # Settings that must match when a dataset is resumed.
    def identity(self) -> dict:
        keys = ("image_size", "fps", "chunk_horizon", "chunk_dt", "seed_base", "phrasing",
                "families", "keep_failures")
        return {k: v for k, v in self.stored().items() if k in keys}


@dataclasses.dataclass
class EpisodeData:
    spec: EpisodeSpec
    success: bool
    error: str = ""
    pngs: list[bytes] = dataclasses.field(default_factory=list)
    # When a skill failed (timed out, or the executor stopped it): whether the task's check
    # already held on the poses of that moment. True means the policy did the task but never
    # said "done", a different failure from not doing it. None when no skill failed.
    task_met_at_failure: Optional[bool] = None
    # tasks.task_measures at the end (or at the failure): how near the check the poses were.
    measures: dict[str, float] = dataclasses.field(default_factory=dict)
    columns: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    instructions: list[str] = dataclasses.field(default_factory=list)  # per frame
    regrasps: int = 0  # picks started again after saying done with empty fingers
    # places' "done"s ignored because the fingers still held the object (the release check)
    dones_while_holding: int = 0

    def add_finger_counts(self, executor: SkillExecutor) -> None:
        """Fold in an ended skill's regrasps and ignored dones, once per skill."""
        self.regrasps += executor.regrasps
        self.dones_while_holding += executor.dones_while_holding

    @property
    def length(self) -> int:
        return len(self.pngs)


def _png(image: np.ndarray, level: int) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=level)
    return buffer.getvalue()


def _place_position(world: TabletopWorld, skill: SkillSpec, start: dict) -> np.ndarray:
    poses = world.object_poses()
    if skill.destination in PUSH_DIRECTIONS:
        return np.array(start[skill.target_object].position) + 0.12 * PUSH_DIRECTIONS[
            skill.destination]
    if skill.destination in poses:
        return np.array(poses[skill.destination].position)
    return np.array(poses[skill.target_object].position)  # pick: where the cube is


def _deliver(executor: SkillExecutor, in_flight: Optional[tuple[float, TimedChunk]],
             world: TabletopWorld) -> Optional[tuple[float, TimedChunk]]:
    """Hand a delayed chunk to the executor once its arrival time has come; what is left."""
    now = world.sim_time
    if in_flight is None or now < in_flight[0]:
        return in_flight
    if executor.state.active:  # with the joints as measured now (the regrasp check reads them)
        executor.on_chunk(in_flight[1], now, world.joint_state()[1])
    return None


def _step_world(world: TabletopWorld, executor: SkillExecutor) -> None:
    command = executor.command(world.sim_time + world.time_step)
    if command is not None:
        world.set_joint_targets(JOINT_NAMES, command)
    world.step()


def episode_timing(config: GeneratorConfig) -> SkillTiming:
    """The skill executor's timeouts in the simulated episodes: the skill controller's defaults
    (its hold after `policy_timeout_s` without a chunk included) and the config's skill timeout."""
    return SkillTiming(timeout_s=config.skill_timeout_s)


def run_episode(spec: EpisodeSpec, config: GeneratorConfig,
                expert: Optional[PolicyBackend] = None, record: bool = True,
                grasp: Optional[GraspCheck] = GraspCheck(),
                release_check: Optional[GraspCheck] = None) -> EpisodeData:
    """Run one attempt closed loop and record it (frames as PNG bytes).

    `expert` may be any backend (for closed-loop evaluation of a learned policy, with
    `record=False`): it gets the camera image, and the ground-truth scene only if it is
    privileged. `data.success` is the simulator's verdict on the task. `grasp`: the skill
    controller's check of a pick's "done" (its defaults; None: no check), as in the graph.
    `release_check`: its check of a place's "done" (None, the default, as the demonstrations
    were recorded: generation leaves it off so that the data stays the same).
    """
    expert = expert or ScriptedExpert(config.chunk_horizon, config.chunk_dt, config.max_speed)
    privileged = expert.requires_ground_truth
    world = TabletopWorld(seed=spec.seed, image_width=config.image_size,
                          image_height=config.image_size, cube_colors=spec.colors,
                          camera_jitter_m=config.camera_jitter_m)
    rng = np.random.default_rng([spec.seed, 104729])
    data = EpisodeData(spec, success=False)
    rows: dict[str, list] = {k: [] for k in (
        "observation.state", "action.chunk", "skill_done", "progress", "skill_index", "skill",
        "observation.ee_position", "privileged.target_position", "privileged.place_position")}
    skill_running = False  # a skill started whose finger counts are not yet in `data`
    try:
        arm = np.asarray(HOME_ARM) + rng.normal(0.0, config.start_joint_noise, 7)
        world.reset(spec.seed, joint_positions=list(arm) + [FINGER_OPEN, FINGER_OPEN])
        initial = world.object_poses()
        task = TaskSpec(spec.family, spec.target, spec.destination)
        executor = SkillExecutor(JOINT_NAMES, blend_time_s=0.1, max_chunk_age_s=1.0)
        steps = int(round(1.0 / (config.fps * world.time_step)))
        timing = episode_timing(config)
        # What of the policy's action lead the latency does not already give.
        shift = lead_shift(expert.min_action_lead_s, config.inference_latency_s)
        for index, skill in enumerate(spec.skills):
            expert.reset(skill)
            executor.start(skill.skill_id, world.sim_time, timing, world.joint_state()[1],
                           grasp_check_for(skill.skill, grasp),
                           release_check_for(skill.skill, release_check))
            skill_running = True
            policy_skill_id, policy_skill = executor.policy_skill_id, skill
            held, chunk_id, start = 0, 0, world.object_poses()
            in_flight: Optional[tuple[float, TimedChunk]] = None  # (arrival time, chunk)
            next_read = world.sim_time  # the policy reads no frame before this (period)
            while True:
                # While a chunk is in flight the policy is busy: no frame is read, time goes on.
                # Once the skill has ended, frames come at the camera's rate whatever the period:
                # the done_hold_frames after it are a time at 10 Hz, not a count of inferences.
                announced = executor.announced_skill_id(world.sim_time)
                if announced != policy_skill_id:  # a regrasp, fingers open: start again
                    policy_skill_id = announced
                    policy_skill = dataclasses.replace(skill, skill_id=announced)
                    expert.reset(policy_skill)
                if in_flight is None and (world.sim_time >= next_read - 1e-9
                                          or not executor.state.active):
                    now = world.sim_time
                    next_read = now + config.inference_period_s
                    names, q, _, _ = world.joint_state()
                    image = world.render()
                    chunk = expert.infer(Observation(
                        now, names, q, policy_skill, image=image,
                        scene=world.object_poses() if privileged else None))
                    data.pngs.append(_png(image, config.png_compress_level) if record else b"")
                    data.instructions.append(skill.instruction)
                    for key, value in (("observation.state", q),
                                       ("action.chunk", chunk.positions),
                                       ("skill_done", chunk.skill_done),
                                       ("progress", chunk.progress),
                                       ("skill_index", index), ("skill", skill.skill),
                                       ("observation.ee_position", world.gripper_position()),
                                       ("privileged.target_position", np.array(
                                           world.object_poses()[skill.target_object].position)),
                                       ("privileged.place_position",
                                        _place_position(world, skill, start))):
                        rows[key].append(value)
                    if executor.state.active:
                        executed = chunk.positions.copy()
                        if shift > 0:  # the policy's action lead, as the policy node applies it
                            executed = advance_rows(executed, chunk.dt, shift)
                        if config.perturb_std > 0:
                            executed[:, :7] += rng.normal(0.0, config.perturb_std, 7)
                        timed = TimedChunk(now, chunk.dt, executed, chunk.joint_names,
                                           policy_skill_id, chunk_id, chunk.skill_done,
                                           chunk.progress)
                        if config.inference_latency_s > 0:
                            in_flight = (now + config.inference_latency_s, timed)
                        else:
                            executor.on_chunk(timed, now, q)
                        chunk_id += 1
                    if executor.state is SkillState.SUCCEEDED:
                        if held >= config.done_hold_frames:
                            data.add_finger_counts(executor)
                            skill_running = False
                            break
                        held += 1
                for _ in range(steps):
                    in_flight = _deliver(executor, in_flight, world)
                    _step_world(world, executor)
                if executor.state is SkillState.FAILED:
                    poses = world.object_poses()
                    data.task_met_at_failure = task_succeeded(task, initial, poses)
                    data.measures = task_measures(task, initial, poses)
                    raise RuntimeError(f"skill {skill.skill} failed: {executor.message}")
        world.step(config.settle_steps)
        poses = world.object_poses()
        data.success = task_succeeded(task, initial, poses)
        data.measures = task_measures(task, initial, poses)
        if not data.success:
            data.error = "task check failed after every skill reported done"
    except (RuntimeError, ValueError) as error:
        if skill_running:  # failed, or the policy raised mid-skill: its counts still count
            data.add_finger_counts(executor)
        data.error = f"{type(error).__name__}: {error}"
    finally:
        world.close()
    if data.pngs:
        data.columns = {key: np.asarray(value) for key, value in rows.items()}
    return data


# ---------------------------------------------------------------------- LeRobot-layout writer
CHUNKS_SIZE = 1000  # episodes per data/chunk-XXX folder, as LeRobot
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
IMAGE_KEY = "observation.image"
IMAGE_DIR = "images/" + IMAGE_KEY + "/episode_{episode_index:06d}"
IMAGE_PATH = IMAGE_DIR + "/frame_{frame_index:06d}.png"
EPISODE_META_KEY = b"vla_bringup.episode"


def _features(config: GeneratorConfig) -> dict:
    def vector(size, names=None, dtype="float32"):
        return {"dtype": dtype, "shape": [size], "names": names}
    joints = list(JOINT_NAMES)
    return {
        IMAGE_KEY: {"dtype": "image", "shape": [config.image_size, config.image_size, 3],
                    "names": ["height", "width", "channels"]},
        "observation.state": vector(9, joints),
        "action": vector(9, joints),
        "action.chunk": {"dtype": "float32", "shape": [config.chunk_horizon, 9],
                         "names": ["step", joints]},
        "skill_done": vector(1, None, "bool"), "progress": vector(1),
        "skill_index": vector(1, None, "int64"), "skill": vector(1, None, "string"),
        "instruction": vector(1, None, "string"),
        "observation.ee_position": vector(3, ["x", "y", "z"]),
        "privileged.target_position": vector(3, ["x", "y", "z"]),
        "privileged.place_position": vector(3, ["x", "y", "z"]),
        **{k: vector(1, None, "int64") for k in ("frame_index", "episode_index", "index",
                                                  "task_index")},
        "timestamp": vector(1),
    }


def _write_atomic(path, text: str) -> None:
    import os
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class LeRobotWriter:
    """Appends episodes to a dataset folder; see the module docstring for the layout."""

    def __init__(self, root, config: GeneratorConfig) -> None:
        import json
        from pathlib import Path
        self.root, self.config = Path(root), config
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        info_path = self.root / "meta" / "info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        stored = info.get("vla_bringup", {}).get("generator_identity")
        if stored is not None and stored != config.identity():
            raise ValueError(f"{self.root} was generated with {stored}; resuming needs the same "
                             f"settings, got {config.identity()}")
        # info.json holds one set of settings for all episodes, so the rest must match too
        # (a setting added since, absent from an older info.json, counts at its default).
        settings, defaults = config.stored(), GeneratorConfig().stored()
        old = info.get("vla_bringup", {}).get("generator_config", {})
        changed = {k: (old.get(k, defaults[k]), v) for k, v in settings.items()
                   if old.get(k, defaults[k]) != v} if old else {}
        if changed:
            raise ValueError(f"{self.root} was generated with other settings (stored, given): "
                             f"{changed}; one dataset keeps one set. Resume with the stored "
                             "values, or write to a new --out")
        self.failures: list[dict] = list(info.get("vla_bringup", {}).get("failed_attempts", []))
        self.next_attempt = int(info.get("vla_bringup", {}).get("next_attempt", 0))
        self.episodes: list[dict] = []
        self.tasks: dict[str, int] = {}
        self._recover()

    def _recover(self) -> None:
        """Rebuild meta from the committed parquet files; drop anything half-written."""
        import json
        import shutil
        import pyarrow.parquet as pq
        for leftover in list(self.root.glob("data/*/.*.tmp")) + list(self.root.glob("meta/.*.tmp")):
            leftover.unlink()
        files = sorted(self.root.glob("data/chunk-*/episode_*.parquet"))
        for expected, path in enumerate(files):
            record = json.loads(pq.read_schema(path).metadata[EPISODE_META_KEY])
            if record["episode_index"] != expected:
                raise ValueError(f"{path}: episode indices are not contiguous; fix by hand")
            self.episodes.append(record)
            for task in record["tasks"]:
                self.tasks.setdefault(task, len(self.tasks))
            self.next_attempt = max(self.next_attempt, record["attempt"] + 1)
        images = self.root / "images" / IMAGE_KEY
        if images.is_dir():
            for folder in images.iterdir():
                name = folder.name
                if name.startswith(".") or int(name.split("_")[1]) >= len(self.episodes):
                    shutil.rmtree(folder)  # frames of an episode whose parquet never landed
        self._write_meta()

    @property
    def total_frames(self) -> int:
        return sum(e["length"] for e in self.episodes)

    def add_failure(self, data: EpisodeData) -> None:
        self.failures.append({"attempt": data.spec.attempt, "seed": data.spec.seed,
                              "family": data.spec.family, "error": data.error})
        self.next_attempt = max(self.next_attempt, data.spec.attempt + 1)
        self._write_meta()

    def write(self, data: EpisodeData) -> int:
        import json
        import os
        import shutil
        import pyarrow.parquet as pq
        index, spec, length = len(self.episodes), data.spec, data.length
        frames = self.root / IMAGE_DIR.format(episode_index=index)
        staging = frames.with_name("." + frames.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for frame, png in enumerate(data.pngs):
            (staging / f"frame_{frame:06d}.png").write_bytes(png)
        tasks = list(dict.fromkeys(data.instructions))
        for task in tasks:
            self.tasks.setdefault(task, len(self.tasks))
        record = {"episode_index": index, "tasks": tasks, "length": length,
                  "instruction": spec.instruction, "family": spec.family, "target": spec.target,
                  "destination": spec.destination, "colors": list(spec.colors),
                  "seed": spec.seed, "attempt": spec.attempt, "phrasing": spec.phrasing,
                  "success": data.success,
                  "skills": [dataclasses.asdict(s) for s in spec.skills]}
        table = self._table(data, index)
        table = table.replace_schema_metadata({EPISODE_META_KEY: json.dumps(record).encode()})
        path = self.root / DATA_PATH.format(episode_chunk=index // CHUNKS_SIZE, episode_index=index)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(frames, ignore_errors=True)
        os.replace(staging, frames)
        pq.write_table(table, temporary)
        os.replace(temporary, path)  # the commit point
        self.episodes.append(record)
        self.next_attempt = max(self.next_attempt, spec.attempt + 1)
        self._write_meta()
        return index

    def _table(self, data: EpisodeData, index: int):
        import pyarrow as pa
        columns, length = data.columns, data.length

        def fixed(values, *shape):
            array = pa.array(np.asarray(values, dtype=np.float32).reshape(-1))
            for size in reversed(shape):
                array = pa.FixedSizeListArray.from_arrays(array, size)
            return array
        start = self.total_frames
        chunk = columns["action.chunk"]
        return pa.table({
            "observation.state": fixed(columns["observation.state"], 9),
            "action": fixed(chunk[:, 0], 9),
            "action.chunk": fixed(chunk, chunk.shape[1], 9),
            "skill_done": pa.array(columns["skill_done"].astype(bool)),
            "progress": pa.array(columns["progress"].astype(np.float32)),
            "skill_index": pa.array(columns["skill_index"].astype(np.int64)),
            "skill": pa.array([str(s) for s in columns["skill"]]),
            "instruction": pa.array(data.instructions),
            "observation.ee_position": fixed(columns["observation.ee_position"], 3),
            "privileged.target_position": fixed(columns["privileged.target_position"], 3),
            "privileged.place_position": fixed(columns["privileged.place_position"], 3),
            "timestamp": pa.array((np.arange(length) / self.config.fps).astype(np.float32)),
            "frame_index": pa.array(np.arange(length, dtype=np.int64)),
            "episode_index": pa.array(np.full(length, index, dtype=np.int64)),
            "index": pa.array(np.arange(start, start + length, dtype=np.int64)),
            "task_index": pa.array([self.tasks[t] for t in data.instructions], type=pa.int64()),
        })

    def _write_meta(self) -> None:
        import json
        n, meta = len(self.episodes), self.root / "meta"
        _write_atomic(meta / "episodes.jsonl",
                      "".join(json.dumps(e) + "\n" for e in self.episodes))
        _write_atomic(meta / "tasks.jsonl", "".join(
            json.dumps({"task_index": i, "task": t}) + "\n" for t, i in self.tasks.items()))
        info = {
            "codebase_version": "v2.1", "robot_type": "franka_panda",
            "total_episodes": n, "total_frames": self.total_frames, "total_tasks": len(self.tasks),
            "total_videos": 0, "total_chunks": (n + CHUNKS_SIZE - 1) // CHUNKS_SIZE,
            "chunks_size": CHUNKS_SIZE, "fps": self.config.fps, "splits": {"train": f"0:{n}"},
            "data_path": DATA_PATH, "video_path": None, "image_path": IMAGE_PATH,
            "features": _features(self.config),
            "vla_bringup": {
                "generator": "vla_bringup.sim.demonstrations (scripted expert, PyBullet)",
                "generator_identity": self.config.identity(),
                "generator_config": self.config.stored(),
                "next_attempt": self.next_attempt, "failed_attempts": self.failures,
                "chunk_dt": self.config.chunk_dt, "joint_names": list(JOINT_NAMES),
                "image_format": "png (RGB uint8), one file per frame at image_path",
            },
        }
        _write_atomic(meta / "info.json", json.dumps(info, indent=1) + "\n")


# ---------------------------------------------------------------------- generation loop
_WORKER_EXPERT: Optional[ScriptedExpert] = None


def _attempt(job: tuple[int, GeneratorConfig]) -> EpisodeData:
    global _WORKER_EXPERT
    attempt, config = job
    if _WORKER_EXPERT is None:  # one IK client per process, reused across episodes
        _WORKER_EXPERT = ScriptedExpert(config.chunk_horizon, config.chunk_dt, config.max_speed)
    spec = sample_episode(attempt, config.seed_base, config.phrasing, config.families,
                          config.canonical_fraction)
    # The expert says a pick is done only with the cube in its hand: no grasp check needed.
    return run_episode(spec, config, _WORKER_EXPERT, grasp=None)


class _Progress:
    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        import sys
        import time
        self.started, self.stream, self.enabled = time.perf_counter(), sys.stderr, enabled
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="ep", desc="episodes")
            except ImportError:
                pass
        self.total, self.done = total, initial

    def update(self, episodes: int, frames: int, failures: int) -> None:
        import time
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rates = f"{episodes / elapsed:.2f} ep/s, {frames / elapsed:.1f} frames/s, {failures} failed"
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(rates)
        elif self.enabled:
            print(f"[generate] {self.done}/{self.total} episodes, {rates}", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def generate(root, episodes: int, config: Optional[GeneratorConfig] = None, workers: int = 1,
             progress: bool = True, max_attempts: Optional[int] = None) -> dict:
    """Fill `root` up to `episodes` successful episodes (resuming what is there)."""
    import collections
    import time
    config = config or GeneratorConfig()
    writer = LeRobotWriter(root, config)
    have = len(writer.episodes)
    limit = writer.next_attempt + (max_attempts if max_attempts is not None else 10 * episodes + 10)
    bar = _Progress(episodes, min(have, episodes), progress and have < episodes)
    started, written, frames, failed = time.perf_counter(), 0, 0, 0
    attempts = iter(range(writer.next_attempt, limit))

    def handle(data: EpisodeData) -> None:
        nonlocal written, frames, failed
        if data.success or (config.keep_failures and data.length):
            writer.write(data)
            written, frames = written + 1, frames + data.length
            bar.update(written, frames, failed)
        else:
            writer.add_failure(data)
            failed += 1
    try:
        if workers <= 1:
            for attempt in attempts:
                if len(writer.episodes) >= episodes:
                    break
                handle(_attempt((attempt, config)))
        else:
            import multiprocessing
            pool = multiprocessing.get_context("spawn").Pool(workers)
            try:
                window = collections.deque()  # results are consumed in attempt order
                while True:
                    while len(window) < 2 * workers and len(writer.episodes) + len(window) < (
                            episodes + workers):
                        attempt = next(attempts, None)
                        if attempt is None:
                            break
                        window.append(pool.apply_async(_attempt, ((attempt, config),)))
                    if not window or len(writer.episodes) >= episodes:
                        break
                    handle(window.popleft().get())
            finally:
                pool.terminate()  # attempts still running are not needed (or we were stopped)
                pool.join()
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    return {"root": str(root), "episodes": len(writer.episodes), "new_episodes": written,
            "new_frames": frames, "failed_attempts": failed,
            "total_frames": writer.total_frames, "seconds": elapsed,
            "episodes_per_s": written / elapsed if elapsed > 0 else 0.0,
            "frames_per_s": frames / elapsed if elapsed > 0 else 0.0}
