"""A privileged scripted expert: reads simulator ground truth and plans joint-space chunks.

Each skill is a small phase machine over Cartesian via points of the grasp point (the centre
between the finger pads). Every call re-plans from the measured joints (closed loop): the phase
advances when the measured state reaches its via point, and the chunk follows a straight line
towards the current via point at a bounded speed, converted to joints by IK row by row. Via
points that depend on objects are recomputed from the scene at every call, except where a
moving object must not be chased (the grasp spot while closing, the push line).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import numpy as np

from vla_bringup.policy.base import ActionChunk, ObjectPose, Observation, PolicyBackend, SkillSpec
from vla_bringup.sim.kinematics import (
    FINGER_CLOSED, FINGER_OPEN, JOINT_NAMES, PANDA_BASE_YAW, PandaKinematics, down_orientation,
    hand_yaw)
from vla_bringup.sim.tasks import CUBE_SIZE, PUSH_DIRECTIONS, TRAY_FLOOR_TOP

HOVER = 0.12  # m above the final spot, where descents start
LIFT = 0.15  # m, lift after grasping
RETREAT = 0.10  # m, rise after releasing / pushing
REACHED = 0.01  # m, a via point in free space counts as reached
# Via points in contact (grasp, release, push start) are judged per axis. Height decides the
# contact and is known from the joints alone, so it is held tight from above (and anything lower
# counts: the descent was stopped by the table or the cube below). Across the table a centimetre
# is harmless (the open fingers span 8 cm around a 5 cm cube, the push pad is 6 cm wide), and a
# cube may drop anywhere well inside the tray. A learned policy that localises objects to about
# a centimetre from pixels then still meets the trigger it was shown, instead of hovering at
# its edge (docs/training_history.md, runs 14-16).
CONTACT_HEIGHT = 0.008  # m above the via point
CONTACT_ACROSS = 0.012  # m
TRAY_ACROSS = 0.03  # m from the tray's release point (the floor is 18 cm wide)
SLOW = 0.10  # m/s cap near objects, so contacts stay gentle
YAW_RATE = 1.0  # rad/s, wrist rotation speed
FINGER_SETTLE = 0.4  # s the fingers get to close or open before the arm moves on
HELD = 0.03  # m, a cube this close to the grasp point is in the hand
EMPTY_GRIP = 0.01  # m, fingers closed this far have nothing between them
RELEASE_GAP = {"tray": 0.01, "cube": 0.004}  # m between cube bottom and surface at release
# Pushing uses the closed fingers turned across the push direction: a 6 cm wide, 3 cm thick pad.
PUSH_BACKOFF = 0.065  # m from cube centre to pad centre, clear of a cube yawed by up to 20 deg
PUSH_CONTACT = 0.04  # m from cube centre to pad centre when touching (half cube + half pad)
PUSH_DISTANCE = 0.12
PUSH_RELEASE = 0.015  # m to back away from the pushed cube before rising
# Grasp point relative to the cube centre: fingertips 2 cm over the table, hand above the cubes.
PUSH_HEIGHT = 0.003


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def _rotation(quat) -> np.ndarray:
    x, y, z, w = quat
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _square_yaw(quat) -> float:
    """Gripper yaw that grips a cube across two faces, nearest the home yaw.

    A cube looks the same every 90 deg, so any horizontal face axis will do; taking the one
    nearest the home yaw keeps the wrist joint far from its limits.
    """
    axes = _rotation(quat)
    axis = axes[:, int(np.argmin(np.abs(axes[2])))]  # the most horizontal one
    offset = np.arctan2(axis[1], axis[0]) - PANDA_BASE_YAW
    return PANDA_BASE_YAW + float((offset + np.pi / 4) % (np.pi / 2) - np.pi / 4)


@dataclasses.dataclass(frozen=True)
class _State:
    stamp: float
    position: np.ndarray  # grasp point, m
    yaw: float
    fingers: float
    scene: Mapping[str, ObjectPose]

    def reached(self, point: np.ndarray, tolerance: float = REACHED) -> bool:
        return bool(np.linalg.norm(self.position - point) < tolerance)

    def in_contact_at(self, point: np.ndarray, across: float = CONTACT_ACROSS) -> bool:
        error = self.position - point
        return bool(error[2] < CONTACT_HEIGHT and np.linalg.norm(error[:2]) < across)


@dataclasses.dataclass(frozen=True)
class _Target:
    position: np.ndarray
    yaw: float
    fingers: float
    speed: float  # m/s cap for this segment (the expert's max_speed applies on top)
    done: bool = False


class ScriptedExpert(PolicyBackend):
    name = "scripted_expert"
    requires_ground_truth = True
    requires_image = False
    _PHASES = {"pick": 4, "place": 4, "push": 5}

    def __init__(self, horizon: int = 16, dt: float = 0.1, max_speed: float = 0.25) -> None:
        if horizon < 1 or dt <= 0 or max_speed <= 0:
            raise ValueError("horizon, dt and max_speed must be positive")
        self.horizon, self.dt, self.max_speed = int(horizon), float(dt), float(max_speed)
        self._kinematics = PandaKinematics()
        self.reset(None)

    def reset(self, skill: Optional[SkillSpec]) -> None:
        self._skill_id = None if skill is None else skill.skill_id
        self._phase = 0
        self._phase_stamp: Optional[float] = None
        self._anchor: Optional[np.ndarray] = None  # grasp point when the phase began
        self._origin: Optional[ObjectPose] = None  # pushed cube's pose at skill start

    def infer(self, observation: Observation) -> ActionChunk:
        skill = observation.skill
        if skill.skill_id != self._skill_id:
            self.reset(skill)  # a new skill without an explicit reset starts from scratch
        if skill.skill not in self._PHASES:
            raise ValueError(f"scripted expert has no skill {skill.skill!r}")
        if observation.scene is None:
            raise ValueError("scripted expert needs the ground-truth scene in the observation")
        q = self._joints(observation)
        position, quat = self._kinematics.fk(q[:7])
        state = _State(observation.stamp, position, hand_yaw(quat),
                       float(np.mean(q[7:])), observation.scene)
        if self._phase_stamp is None:
            self._enter(0, state)
        planner = {"pick": self._pick, "place": self._place, "push": self._push}[skill.skill]
        # A phase may finish on the very state it is entered with, so re-plan after each change.
        for _ in range(self._PHASES[skill.skill] + 1):
            phase = self._phase
            target = planner(state, skill)
            if self._phase == phase:
                break
        progress = 1.0 if target.done else self._phase / self._PHASES[skill.skill]
        return ActionChunk(JOINT_NAMES, self._rows(state, target), self.dt,
                           skill_done=target.done, progress=progress)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _joints(observation: Observation) -> np.ndarray:
        index = {name: i for i, name in enumerate(observation.joint_names)}
        missing = [n for n in JOINT_NAMES if n not in index]
        if missing:
            raise ValueError(f"observation lacks joints {missing}")
        values = np.asarray(observation.joint_positions, dtype=float)
        return np.array([values[index[n]] for n in JOINT_NAMES])

    @staticmethod
    def _object(scene: Mapping[str, ObjectPose], name: str) -> ObjectPose:
        if name not in scene:
            raise ValueError(f"scene has no object {name!r}; it has {sorted(scene)}")
        return scene[name]

    def _enter(self, phase: int, state: _State) -> None:
        self._phase, self._phase_stamp, self._anchor = phase, state.stamp, state.position

    def _settled(self, state: _State) -> bool:
        return state.stamp - self._phase_stamp >= FINGER_SETTLE

    def _rows(self, state: _State, target: _Target) -> np.ndarray:
        """Straight line to the target at the speed cap, the wrist turning at YAW_RATE."""
        times = self.dt * np.arange(1, self.horizon + 1)
        delta = target.position - state.position
        distance = float(np.linalg.norm(delta))
        travel = min(target.speed, self.max_speed) * times
        fraction = np.minimum(travel / distance, 1.0) if distance > 1e-9 else np.ones_like(times)
        yaw_error = _wrap(target.yaw - state.yaw)
        yaws = state.yaw + np.clip(yaw_error, -YAW_RATE * times, YAW_RATE * times)
        rows, previous = [], None
        for f, yaw in zip(fraction, yaws):
            key = (f, yaw)
            if key != previous:  # once the target is reached the rows repeat: skip the IK
                arm = self._kinematics.ik(state.position + f * delta, down_orientation(yaw))
                previous = key
            rows.append(np.concatenate([arm, [target.fingers, target.fingers]]))
        return np.array(rows)

    # ------------------------------------------------------------------ skills
    def _pick(self, state: _State, skill: SkillSpec) -> _Target:
        cube_pose = self._object(state.scene, skill.target_object)
        cube = np.array(cube_pose.position)
        yaw = _square_yaw(cube_pose.orientation)
        above = cube + [0.0, 0.0, HOVER]
        if self._phase == 0:  # approach above the cube, fingers open
            if state.reached(above) and state.fingers > FINGER_OPEN - 0.005:
                self._enter(1, state)
            return _Target(above, yaw, FINGER_OPEN, self.max_speed)
        if self._phase == 1:  # descend around it
            if state.in_contact_at(cube):
                self._enter(2, state)
            return _Target(cube, yaw, FINGER_OPEN, SLOW)
        if self._phase == 2:  # close on the spot where the descent ended
            if self._settled(state):
                # Fingers that met no cube close completely: start over.
                self._enter(3 if state.fingers > EMPTY_GRIP else 0, state)
            return _Target(self._anchor, yaw, FINGER_CLOSED, SLOW)
        held = np.linalg.norm(cube - state.position) < HELD
        if not held:  # slipped out while lifting: try again
            self._enter(0, state)
            return _Target(above, yaw, FINGER_OPEN, self.max_speed)
        lifted = self._anchor + [0.0, 0.0, LIFT]
        return _Target(lifted, yaw, FINGER_CLOSED, self.max_speed, done=state.reached(lifted))

    def _place(self, state: _State, skill: SkillSpec) -> _Target:
        held = np.array(self._object(state.scene, skill.target_object).position)
        if skill.destination == "tray":
            surface = np.array(self._object(state.scene, "tray").position)
            surface[2] += TRAY_FLOOR_TOP
            yaw, gap, across = state.yaw, RELEASE_GAP["tray"], TRAY_ACROSS
        elif skill.destination.endswith("_cube") and skill.destination != skill.target_object:
            below = self._object(state.scene, skill.destination)
            surface = np.array(below.position) + [0.0, 0.0, CUBE_SIZE / 2]
            yaw, gap, across = _square_yaw(below.orientation), RELEASE_GAP["cube"], CONTACT_ACROSS
        else:
            raise ValueError(f"cannot place {skill.target_object!r} on {skill.destination!r}")
        # Aim with the held cube, not the grasp point: it may sit a little off-centre.
        offset = held - state.position
        if np.linalg.norm(offset) > HELD:
            offset = np.zeros(3)
        release = surface + [0.0, 0.0, CUBE_SIZE / 2 + gap] - offset
        above = release + [0.0, 0.0, HOVER]
        if self._phase == 0:  # carry above the destination
            if state.reached(above):
                self._enter(1, state)
            return _Target(above, yaw, FINGER_CLOSED, self.max_speed)
        if self._phase == 1:  # lower onto it
            if state.in_contact_at(release, across):
                self._enter(2, state)
            return _Target(release, yaw, FINGER_CLOSED, SLOW)
        if self._phase == 2:  # let go
            if self._settled(state) and state.fingers > FINGER_OPEN - 0.005:
                self._enter(3, state)
            return _Target(self._anchor, yaw, FINGER_OPEN, SLOW)
        up = self._anchor + [0.0, 0.0, RETREAT]
        return _Target(up, yaw, FINGER_OPEN, self.max_speed, done=state.reached(up))

    def _push(self, state: _State, skill: SkillSpec) -> _Target:
        if skill.destination not in PUSH_DIRECTIONS:
            raise ValueError(f"push destination must be one of {sorted(PUSH_DIRECTIONS)}, "
                             f"got {skill.destination!r}")
        direction = PUSH_DIRECTIONS[skill.destination]
        cube = np.array(self._object(state.scene, skill.target_object).position)
        if self._origin is None:
            self._origin = self._object(state.scene, skill.target_object)
        # Fingers across the push direction, the pad parallel to the cube's face as it was at
        # the start (so the wrist does not twist while the cube turns a little under the push).
        yaw = _square_yaw(self._origin.orientation) + np.pi / 2
        start = cube - PUSH_BACKOFF * direction + [0.0, 0.0, PUSH_HEIGHT]
        if self._phase == 0:  # above the side opposite the push, fingers closed
            above = start + [0.0, 0.0, HOVER]
            if state.reached(above) and state.fingers < 0.005:
                self._enter(1, state)
            return _Target(above, yaw, FINGER_CLOSED, self.max_speed)
        if self._phase == 1:  # down to the table beside the cube
            if state.in_contact_at(start):
                self._enter(2, state)
            return _Target(start, yaw, FINGER_CLOSED, SLOW)
        if self._phase == 2:
            # The push ends a fixed distance from where the cube started, but the pad follows
            # the cube sideways so that it keeps pushing through the cube's centre.
            along = float((np.array(self._origin.position) - cube) @ direction) + PUSH_DISTANCE
            end = start + (along - PUSH_CONTACT + PUSH_BACKOFF) * direction
            if state.reached(end):
                self._enter(3, state)
            return _Target(end, yaw, FINGER_CLOSED, SLOW)
        if self._phase == 3:  # back off first: rising while pressed drags the cube along
            clear = self._anchor - PUSH_RELEASE * direction
            if state.reached(clear, CONTACT_HEIGHT):
                self._enter(4, state)
            return _Target(clear, yaw, FINGER_CLOSED, SLOW)
        up = self._anchor + [0.0, 0.0, RETREAT]
        return _Target(up, yaw, FINGER_CLOSED, self.max_speed, done=state.reached(up))
