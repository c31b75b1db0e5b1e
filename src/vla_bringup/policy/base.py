"""The policy contract: every backend (scripted expert, built-in VLA, adapters) implements it.

A backend is plain Python (no rclpy). The policy node feeds it an `Observation` built from the
latest camera frame, joint state and active skill, and publishes the `ActionChunk` it returns.
Actions are joint-space position targets for the arm plus the gripper opening, one row per future
control step of `dt` seconds; the row k is the target for `observation.stamp + (k + 1) * dt`.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

# The skill primitives a plan is made of: what the skill controller accepts and what a backend
# may be asked to run.
SKILLS = ("pick", "place", "push")


@dataclasses.dataclass(frozen=True)
class SkillSpec:
    """One step of a task plan, as the skill controller hands it to the policy."""

    skill_id: str  # unique per execution, so stale chunks of an earlier skill can be dropped
    skill: str  # one of SKILLS
    instruction: str  # language the policy is conditioned on, e.g. "pick up the red cube"
    target_object: str  # e.g. "red_cube"
    destination: str = ""  # "tray" | "left" | "right" | "<color>_cube" | ""


@dataclasses.dataclass(frozen=True)
class ObjectPose:
    position: tuple[float, float, float]  # m, world frame
    orientation: tuple[float, float, float, float]  # quaternion x, y, z, w


@dataclasses.dataclass(frozen=True)
class Observation:
    stamp: float  # s, when the camera frame (or the newest input) was sensed
    joint_names: Sequence[str]
    joint_positions: np.ndarray  # rad (arm) and m (fingers), same order as joint_names
    skill: SkillSpec
    image: Optional[np.ndarray] = None  # HxWx3 uint8 RGB, after perception
    # Privileged simulator ground truth (object name -> pose). Only backends whose
    # `requires_ground_truth` is True may read it; a learned policy must not.
    scene: Optional[Mapping[str, ObjectPose]] = None


@dataclasses.dataclass(frozen=True)
class ActionChunk:
    joint_names: Sequence[str]
    positions: np.ndarray  # (H, N) targets, rad / m
    dt: float  # s between consecutive rows
    skill_done: bool = False  # the skill's goal is reached at this observation (RT-1's terminate)
    progress: float = 0.0  # backend's estimate of skill progress, 0..1

    def __post_init__(self) -> None:
        positions = np.asarray(self.positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != len(self.joint_names):
            raise ValueError(
                f"chunk positions must be (H, {len(self.joint_names)}), got {positions.shape}")
        if positions.shape[0] == 0:
            raise ValueError("chunk must hold at least one action")
        if not np.all(np.isfinite(positions)):
            raise ValueError("chunk holds NaN or inf")
        if not self.dt > 0.0:
            raise ValueError(f"chunk dt must be > 0 s, got {self.dt}")
        object.__setattr__(self, "positions", positions)

    @property
    def horizon(self) -> int:
        return int(self.positions.shape[0])


def joint_vector(observation: Observation, names: Sequence[str]) -> np.ndarray:
    """The positions of `names`, in that order, from `observation`; finite, or ValueError."""
    given = list(observation.joint_names)
    values = np.asarray(observation.joint_positions, dtype=np.float64).reshape(-1)
    if len(values) != len(given):
        raise ValueError(f"{len(given)} joint names but {len(values)} joint positions")
    index = {name: i for i, name in enumerate(given)}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"observation lacks joints {missing}")
    joints = values[[index[n] for n in names]]
    if not np.all(np.isfinite(joints)):
        raise ValueError("joint positions hold NaN or inf")
    return joints


class PolicyBackend(abc.ABC):
    """What the policy node drives. `infer` may be slow; the node calls it off the executor."""

    name: str = "unnamed"
    requires_ground_truth: bool = False  # True only for privileged backends (scripted expert)
    requires_image: bool = True
    # s: the least time between two frames this backend should read (a learned model tuned at
    # one pace declares it); the policy node's inference_rate_hz can only make it longer.
    min_inference_period_s: float = 0.0
    # s: the least time from a frame to the first moment of its chunk that runs; a chunk back
    # sooner is advanced by the difference (core.chunk_schedule.advance_rows).
    min_action_lead_s: float = 0.0

    @abc.abstractmethod
    def reset(self, skill: SkillSpec) -> None:
        """Forget internal state; a new skill starts."""

    @abc.abstractmethod
    def infer(self, observation: Observation) -> ActionChunk:
        """Return the next chunk of joint targets for `observation`."""
