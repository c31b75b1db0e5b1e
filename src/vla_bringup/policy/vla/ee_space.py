"""The end-effector action space of the built-in VLA (`action_space="ee_delta"`).

A chunk row is 5 numbers: where the grasp point should be, as an offset (m, world frame) from
the grasp point measured at the observation, the gripper's yaw about world z as an offset (rad)
from the measured yaw, and the gripper opening (m). The gripper points straight down, as in
every tabletop skill of this stack; a task that needs tilting is outside this action space.

Why: "go 12 cm above the cube" is the same three numbers wherever the arm is, and nearly the
difference between where the cube is and where the gripper is, which a network reads far more
easily than the joint offsets that the same motion needs (those also encode the arm's inverse
kinematics, which changes over the workspace). The price is an IK solve per row at inference,
done by the same solver, with the same rest pose, as the scripted expert's, so a perfect
prediction gives the expert's own joint targets.

Yaw is measured from the home yaw (PANDA_BASE_YAW, which is pi): the home pose sits at 0, not at
the +-pi seam where a state input would jump by 2 pi. The model also sees the measured grasp
point and yaw (`pose`) next to the joints.
This module imports PyBullet (through the kinematics) and is loaded only for this action space.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from vla_bringup.policy.vla.config import EE_ACTION_DIM, EE_STATE_DIM
from vla_bringup.sim.kinematics import (
    FINGER_OPEN, PANDA_BASE_YAW, PandaKinematics, down_orientation, hand_yaw)


def wrap(angle):
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


class EndEffectorSpace:
    """Turns joints into the grasp-point pose and end-effector chunks back into joint targets."""

    def __init__(self, kinematics: Optional[PandaKinematics] = None) -> None:
        self.kinematics = kinematics or PandaKinematics()

    def pose(self, joints) -> np.ndarray:
        """(9,) or (7,) joints -> (4,) grasp point x, y, z (m, world) and the yaw of the hand's
        x axis from the home yaw (rad)."""
        position, quat = self.kinematics.fk(np.asarray(joints, dtype=float)[:7])
        return np.array([*position, wrap(hand_yaw(quat) - PANDA_BASE_YAW)])

    def poses(self, joints) -> np.ndarray:
        """(..., 9) joints -> (..., 4); repeated rows are solved once (chunks often hold still)."""
        joints = np.asarray(joints, dtype=float)
        flat = joints.reshape(-1, joints.shape[-1])[:, :7]
        unique, inverse = np.unique(flat, axis=0, return_inverse=True)
        solved = np.array([self.pose(q) for q in unique]).reshape(-1, EE_STATE_DIM)
        return solved[inverse.reshape(-1)].reshape(*joints.shape[:-1], EE_STATE_DIM)

    @staticmethod
    def encode(chunk_poses, state_poses, gripper) -> np.ndarray:
        """(..., H, 4) target poses, (..., 4) measured pose, (..., H) opening -> (..., H, 5)."""
        chunk_poses = np.asarray(chunk_poses, dtype=float)
        state_poses = np.asarray(state_poses, dtype=float)[..., None, :]
        offset = chunk_poses[..., :3] - state_poses[..., :3]
        yaw = wrap(chunk_poses[..., 3] - state_poses[..., 3])
        return np.concatenate([offset, yaw[..., None], np.asarray(gripper)[..., None]], -1)

    def decode(self, actions, state_pose) -> np.ndarray:
        """(H, 5) actions + the measured grasp pose (4,), as `pose` gives it -> (H, 9) joint
        targets, via IK."""
        actions = np.asarray(actions, dtype=float)
        if actions.ndim != 2 or actions.shape[1] != EE_ACTION_DIM:
            raise ValueError(f"end-effector actions must be (H, {EE_ACTION_DIM}), "
                             f"got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("end-effector actions hold NaN or inf")
        state = np.asarray(state_pose, dtype=float)
        rows = []
        for row in actions:
            yaw = PANDA_BASE_YAW + state[3] + row[3]
            arm = self.kinematics.ik(state[:3] + row[:3], down_orientation(yaw))
            opening = float(np.clip(row[4], 0.0, FINGER_OPEN))
            rows.append(np.concatenate([arm, [opening, opening]]))
        return np.array(rows)

    def close(self) -> None:
        self.kinematics.close()


__all__ = ["EndEffectorSpace", "wrap"]
