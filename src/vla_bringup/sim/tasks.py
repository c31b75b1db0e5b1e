"""Task families of the tabletop and their success checks.

The checks are pure functions of object poses (name -> ObjectPose, as `TabletopWorld.object_poses`
returns them), so evaluation can run on recorded poses as well as on a live world.

Left / right convention: "left" is world +y and "right" is world -y. The camera of `world.py`
looks along +x from in front of the robot, so this is left / right as a viewer of the rendered
image sees it (the robot itself faces -x, so for the robot it is the other way round).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from vla_bringup.policy.base import ObjectPose

Poses = Mapping[str, ObjectPose]

FAMILIES = ("pick_place", "push", "stack")
PUSH_DIRECTIONS = {"left": np.array([0.0, 1.0, 0.0]), "right": np.array([0.0, -1.0, 0.0])}
CUBE_SIZE = 0.05  # m, cube_small.urdf
# Tray geometry as world.py builds it (traybox.urdf scaled by 0.4): the floor's top lies 6 mm above
# the tray origin and the walls stand at +-0.1 m; +-0.09 m keeps a resting cube's centre clear.
TRAY_INNER_HALF = 0.09
TRAY_FLOOR_TOP = 0.006
# Height tolerance for "resting": a cube balanced on a wall or still held above is not "in".
_REST_TOLERANCE = 0.015


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    family: str  # "pick_place" | "push" | "stack"
    target: str  # the cube to move, e.g. "red_cube"
    destination: str  # "tray" | "left" | "right" | "<color>_cube"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown task family {self.family!r}; known: {FAMILIES}")
        valid = {"pick_place": self.destination == "tray",
                 "push": self.destination in PUSH_DIRECTIONS,
                 "stack": self.destination.endswith("_cube") and self.destination != self.target}
        if not valid[self.family]:
            raise ValueError(f"destination {self.destination!r} does not fit family "
                             f"{self.family!r} with target {self.target!r}")


def _position(poses: Poses, name: str) -> np.ndarray:
    if name not in poses:
        raise ValueError(f"no object named {name!r} in poses {sorted(poses)}")
    return np.asarray(poses[name].position, dtype=float)


def cube_in_tray(poses: Poses, cube: str) -> bool:
    """The cube's centre lies over the tray floor and the cube rests on it."""
    offset = _position(poses, cube) - _position(poses, "tray")
    resting_height = TRAY_FLOOR_TOP + CUBE_SIZE / 2
    return bool(np.all(np.abs(offset[:2]) < TRAY_INNER_HALF)
                and abs(offset[2] - resting_height) < _REST_TOLERANCE)


def cube_pushed(initial_poses: Poses, poses: Poses, cube: str, direction: str,
                min_distance: float = 0.08) -> bool:
    """The cube moved at least `min_distance` towards `direction` and is still on the table."""
    if direction not in PUSH_DIRECTIONS:
        raise ValueError(f"push direction must be one of {sorted(PUSH_DIRECTIONS)}")
    moved = _position(poses, cube) - _position(initial_poses, cube)
    return bool(moved @ PUSH_DIRECTIONS[direction] >= min_distance
                and abs(moved[2]) < _REST_TOLERANCE)


def cube_stacked(poses: Poses, top: str, bottom: str) -> bool:
    """`top` rests on `bottom`: centred within half a cube and one cube height above it."""
    offset = _position(poses, top) - _position(poses, bottom)
    return bool(np.linalg.norm(offset[:2]) < CUBE_SIZE / 2
                and abs(offset[2] - CUBE_SIZE) < _REST_TOLERANCE)


def task_succeeded(spec: TaskSpec, initial_poses: Poses, poses: Poses) -> bool:
    if spec.family == "pick_place":
        return cube_in_tray(poses, spec.target)
    if spec.family == "push":
        return cube_pushed(initial_poses, poses, spec.target, spec.destination)
    return cube_stacked(poses, spec.target, spec.destination)


def task_measures(spec: TaskSpec, initial_poses: Poses, poses: Poses) -> dict[str, float]:
    """How far the poses are from the check (m), to tell a near miss from a wrong move:
    what the check compares with its threshold, and how far the target cube moved at all."""
    moved = _position(poses, spec.target) - _position(initial_poses, spec.target)
    measures = {"target_moved_m": float(np.linalg.norm(moved))}
    if spec.family == "pick_place":
        offset = _position(poses, spec.target) - _position(poses, "tray")
        measures["tray_offset_xy_m"] = float(np.abs(offset[:2]).max())  # check: < 0.09
        measures["height_error_m"] = float(offset[2] - TRAY_FLOOR_TOP - CUBE_SIZE / 2)
    elif spec.family == "push":
        measures["pushed_m"] = float(moved @ PUSH_DIRECTIONS[spec.destination])  # >= 0.08
        measures["height_error_m"] = float(moved[2])
    else:
        offset = _position(poses, spec.target) - _position(poses, spec.destination)
        measures["stack_offset_xy_m"] = float(np.linalg.norm(offset[:2]))  # check: < 0.025
        measures["height_error_m"] = float(offset[2] - CUBE_SIZE)
    return measures
