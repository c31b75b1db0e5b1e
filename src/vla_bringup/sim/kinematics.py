"""Inverse / forward kinematics of the Panda grasp point, on a private PyBullet client.

The solver loads only the arm into its own DIRECT client, so calling it never disturbs a running
world (IK in PyBullet works by moving the body's joints). The base pose is defined here once and
imported by `world.py`, so the model used for planning and the simulated arm cannot drift apart.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pybullet as p
import pybullet_data
from pybullet_utils.bullet_client import BulletClient

from vla_bringup.core.robot import PANDA_FINGER_OPEN, PANDA_JOINT_NAMES

PANDA_URDF = "franka_panda/panda.urdf"
TABLE_TOP_Z = 0.625  # m, top face of pybullet_data's table.urdf loaded at the origin
# The arm stands at the +x end of the table facing -x, so a camera in front of the robot looks
# along +x and a viewer's left is world +y (see tasks.py for the left/right convention).
PANDA_BASE_POSITION = (0.6, 0.0, TABLE_TOP_Z)
PANDA_BASE_YAW = np.pi
PANDA_BASE_ORIENTATION = tuple(p.getQuaternionFromEuler((0.0, 0.0, PANDA_BASE_YAW)))

# The command space of the whole stack, in this order (see docs/architecture.md).
JOINT_NAMES = list(PANDA_JOINT_NAMES)
ARM_JOINTS = tuple(range(7))  # panda_joint1..7
FINGER_JOINTS = (9, 10)  # panda_finger_joint1..2
GRASP_LINK = 11  # panda_grasptarget_hand: between the finger pads, 1 cm above their tips
# Home: grasp point 0.42 m in front of the base, 0.36 m above the table, pointing down.
HOME_ARM = np.array([0.0, -0.4, 0.0, -2.4, 0.0, 2.0, np.pi / 4])
FINGER_OPEN = PANDA_FINGER_OPEN
FINGER_CLOSED = 0.0


def down_orientation(yaw: float = PANDA_BASE_YAW) -> np.ndarray:
    """Quaternion (x, y, z, w) of the gripper pointing straight down, rotated `yaw` about z.

    At yaw == PANDA_BASE_YAW (the home pose) the fingers close along world y.
    """
    return np.array(p.getQuaternionFromEuler((np.pi, 0.0, yaw)))


def hand_yaw(quat) -> float:
    """Yaw (rad, world) of the hand's x axis for a grasp quaternion (x, y, z, w): for a
    gripper pointing down, the yaw that `down_orientation` takes."""
    x, y, z, w = quat
    # First column of the rotation matrix.
    return float(np.arctan2(2 * (x * y + z * w), 1 - 2 * (y * y + z * z)))


class DirectClient(BulletClient):
    """A headless PyBullet client whose clean-up stays quiet when its start was interrupted.

    Why: a launch that stops a node while it is still starting can raise KeyboardInterrupt
    inside BulletClient.__init__ (in pybullet.connect), before `_client` is set. The half-built
    client's __del__ then printed an AttributeError traceback into the graph's log (a CI run of
    test_bad_input). The class default below is what __del__ reads until connect returns.
    """

    _client = -1

    def __init__(self) -> None:
        super().__init__(connection_mode=p.DIRECT)


class PandaKinematics:
    """IK / FK for the grasp point of the Panda at PANDA_BASE_POSITION / PANDA_BASE_ORIENTATION."""

    def __init__(self, max_iterations: int = 12, tolerance_m: float = 5e-4,
                 null_space_steps: int = 1) -> None:
        self._max_iterations = max_iterations
        self._null_space_steps = null_space_steps
        self._tolerance = tolerance_m
        self._client = DirectClient()
        self._client.setAdditionalSearchPath(pybullet_data.getDataPath())
        self._robot = self._client.loadURDF(
            PANDA_URDF, PANDA_BASE_POSITION, PANDA_BASE_ORIENTATION, useFixedBase=True)
        # The null-space variant of PyBullet's IK wants limits for every movable joint (9).
        limits = [self._client.getJointInfo(self._robot, j)[8:10]
                  for j in ARM_JOINTS + FINGER_JOINTS]
        self._lower, self._upper = (np.array(v) for v in zip(*limits))
        self._set_arm(HOME_ARM)
        for j in FINGER_JOINTS:
            self._client.resetJointState(self._robot, j, FINGER_OPEN)

    def _set_arm(self, q7: Sequence[float]) -> None:
        for j, q in zip(ARM_JOINTS, q7):
            self._client.resetJointState(self._robot, j, float(q))

    def _grasp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        state = self._client.getLinkState(self._robot, GRASP_LINK, computeForwardKinematics=True)
        return np.array(state[4]), np.array(state[5])

    def fk(self, q7: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Grasp point position (m, world) and quaternion (x, y, z, w) for arm joints `q7`."""
        self._set_arm(np.asarray(q7, dtype=float)[:7])
        return self._grasp_pose()

    def ik(self, position: Sequence[float], orientation: Optional[Sequence[float]] = None,
           rest: Optional[Sequence[float]] = None) -> np.ndarray:
        """Arm joints (7) putting the grasp point at `position` with `orientation`.

        `orientation` defaults to pointing down at the home yaw. `rest` (default: home) seeds the
        solver and is the null-space rest pose, so the redundant elbow stays near it and
        consecutive targets give continuous solutions. PyBullet's IK is a damped least-squares
        step from the current joint state, so it is repeated from its own answer until the grasp
        point is within the tolerance.
        """
        target = np.asarray(position, dtype=float)
        quat = down_orientation() if orientation is None else np.asarray(orientation, float)
        rest7 = HOME_ARM if rest is None else np.asarray(rest, dtype=float)[:7]
        null_space = dict(lowerLimits=self._lower.tolist(), upperLimits=self._upper.tolist(),
                          jointRanges=(self._upper - self._lower).tolist(),
                          restPoses=list(rest7) + [FINGER_OPEN, FINGER_OPEN])
        lower, upper = self._lower[:7], self._upper[:7]
        q = np.clip(rest7, lower, upper)
        self._set_arm(q)
        for i in range(self._max_iterations):
            # Null-space steps first pick the branch near `rest`; they settle ~1 mm off the
            # target though, so the last steps are plain damped least squares from there.
            extra = null_space if i < self._null_space_steps else {}
            solution = self._client.calculateInverseKinematics(
                self._robot, GRASP_LINK, target.tolist(), quat.tolist(),
                maxNumIterations=20, residualThreshold=1e-5, **extra)
            q = np.clip(np.array(solution[:7]), lower, upper)
            self._set_arm(q)
            if i >= self._null_space_steps and (
                    np.linalg.norm(self._grasp_pose()[0] - target) < self._tolerance):
                break
        return q

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client = None
