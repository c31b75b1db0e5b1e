"""PyBullet tabletop: a Franka Panda on a table, a tray and a few coloured 5 cm cubes.

Headless (DIRECT) and self-contained: every world owns its physics client, so several worlds (or a
world beside the IK solver of `kinematics.py`) can live in one process. World frame: origin under
the table centre, z up; the arm stands at the +x end facing -x; the camera looks from the -x end,
so image left is +y.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pybullet as p
import pybullet_data

from vla_bringup.policy.base import ObjectPose
from vla_bringup.sim.kinematics import (
    ARM_JOINTS, FINGER_JOINTS, FINGER_OPEN, GRASP_LINK, HOME_ARM, JOINT_NAMES, DirectClient,
    PANDA_BASE_ORIENTATION, PANDA_BASE_POSITION, PANDA_URDF, TABLE_TOP_Z)
from vla_bringup.sim.tasks import CUBE_SIZE, cube_in_tray

COLORS = {
    "red": (0.85, 0.08, 0.08, 1.0), "green": (0.1, 0.65, 0.2, 1.0),
    "blue": (0.1, 0.25, 0.85, 1.0), "yellow": (0.9, 0.8, 0.1, 1.0),
    "orange": (0.95, 0.45, 0.05, 1.0), "purple": (0.5, 0.15, 0.6, 1.0),
}
# traybox.urdf is 0.6 m wide; scaled to 0.24 m it fits beside the cubes (tasks.py holds the
# resulting inner footprint, which defines "in the tray").
TRAY_SCALE = 0.4
# Layout in the robot's terms: `forward` is the distance in front of the base (world -x).
TRAY_NOMINAL = (0.48, -0.36)  # (forward, y)
TRAY_JITTER = 0.02
CUBE_FORWARD_RANGE = (0.35, 0.58)
CUBE_Y_RANGE = (-0.10, 0.20)  # keeps 12 cm pushes in reach and away from the tray walls
# 10 cm (not just "not touching"): a push starts with the closed fingers ~5 cm behind a cube, and
# must not land on a neighbour standing there.
MIN_CUBE_SPACING = 0.10
CUBE_MAX_YAW = 0.35
SETTLE_STEPS = 48
# Camera: in front of the table (-x), above, looking at the workspace and the arm.
CAMERA_EYE = (-0.70, 0.0, 1.70)
CAMERA_TARGET = (0.28, -0.06, 0.98)
CAMERA_FOV_DEG = 52.0
CAMERA_NEAR, CAMERA_FAR = 0.05, 5.0
FINGER_FORCE = 60.0  # N per finger: holds a 0.1 kg cube with a wide margin
FINGER_FRICTION = 1.5
# cube_small.urdf has friction 1.0; against the table that makes a cube pushed at mid-height tip
# over instead of sliding (it tips when friction * push height > half its size).
CUBE_FRICTION = 0.5


def _forward_to_world(forward: float, y: float) -> tuple[float, float]:
    return PANDA_BASE_POSITION[0] - forward, y  # the arm faces -x


def _quaternion(rotation: np.ndarray) -> np.ndarray:
    """(x, y, z, w) of a rotation matrix, branching on the largest component for accuracy."""
    m = rotation
    trace = np.trace(m)
    if trace > 0.0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
        q[i], q[j], q[k] = s / 4, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
    return np.array(q)



def project_to_image(points, width: int = 224, height: int = 224,
                     eye=CAMERA_EYE) -> np.ndarray:
    """(..., 3) world points (m) -> (..., 2) pixel (u, v) in the front camera's image.

    Pinhole model of `TabletopWorld.render` (vertical field of view, square pixels, pixel
    centres at integer coordinates); `eye` defaults to the nominal camera, without jitter.
    """
    eye = np.asarray(eye, dtype=float)
    forward = np.asarray(CAMERA_TARGET) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    focal = (height / 2.0) / np.tan(np.radians(CAMERA_FOV_DEG) / 2.0)
    offset = np.asarray(points, dtype=float) - eye
    depth = offset @ forward
    u = focal * (offset @ right) / depth + (width - 1) / 2.0
    v = focal * (offset @ down) / depth + (height - 1) / 2.0
    return np.stack([u, v], -1)

class TabletopWorld:
    camera_frame_id = "camera_optical_frame"

    def __init__(self, seed: int = 0, image_width: int = 224, image_height: int = 224,
                 time_step: float = 1.0 / 240.0,
                 cube_colors: Sequence[str] = ("red", "green", "blue", "yellow"),
                 camera_jitter_m: float = 0.0) -> None:
        unknown = [c for c in cube_colors if c not in COLORS]
        if unknown:
            raise ValueError(f"unknown cube colours {unknown}; known: {sorted(COLORS)}")
        self.image_width, self.image_height = int(image_width), int(image_height)
        self.time_step = float(time_step)
        self.cube_names = [f"{c}_cube" for c in cube_colors]
        self._colors = list(cube_colors)
        self._camera_jitter = float(camera_jitter_m)
        self._client = DirectClient()
        self._client.setAdditionalSearchPath(pybullet_data.getDataPath())
        self._steps = 0
        aspect = self.image_width / self.image_height
        self._projection = self._client.computeProjectionMatrixFOV(
            CAMERA_FOV_DEG, aspect, CAMERA_NEAR, CAMERA_FAR)
        self.reset(seed)

    # ----------------------------------------------------------------- scene
    def reset(self, seed: int, joint_positions: Optional[Sequence[float]] = None) -> None:
        """Rebuild the scene from `seed`; the same seed always gives the same poses.

        `joint_positions` (9 values, `joint_names` order) puts the arm there instead of home: a
        live graph keeps commanding the arm's last pose, so a reset must not teleport it away.
        """
        rng = np.random.default_rng(seed)
        c = self._client
        # A full rebuild (not repositioning) also clears contact caches, so a reset is exactly
        # repeatable whatever happened before it.
        c.resetSimulation()
        c.setGravity(0.0, 0.0, -9.81)
        c.setTimeStep(self.time_step)
        c.loadURDF("plane.urdf")
        c.loadURDF("table/table.urdf", useFixedBase=True)
        self._load_robot(joint_positions)
        self._load_objects(rng)
        # Drawn last so that jitter never changes the object layout of a seed.
        self._camera_eye = np.array(CAMERA_EYE) + rng.uniform(
            -self._camera_jitter, self._camera_jitter, 3)
        self._view = c.computeViewMatrix(self._camera_eye.tolist(), CAMERA_TARGET, (0, 0, 1))
        for _ in range(SETTLE_STEPS):  # not counted in sim_time: the episode starts after
            c.stepSimulation()

    def _load_robot(self, joint_positions: Optional[Sequence[float]] = None) -> None:
        c = self._client
        self._robot = c.loadURDF(PANDA_URDF, PANDA_BASE_POSITION, PANDA_BASE_ORIENTATION,
                                 useFixedBase=True)
        self._joint_index = dict(zip(JOINT_NAMES, list(ARM_JOINTS) + list(FINGER_JOINTS)))
        # Arm joints get the URDF's effort and velocity limits; fingers a stronger grip.
        self._limits = {}
        for j in self._joint_index.values():
            info = c.getJointInfo(self._robot, j)
            self._limits[j] = (FINGER_FORCE if j in FINGER_JOINTS else info[10], info[11])
        for j in FINGER_JOINTS:
            c.changeDynamics(self._robot, j, lateralFriction=FINGER_FRICTION)
        # The real fingers are coupled by a rack; with two independent motors one finger
        # shoves a grasped cube against the other and the grasp ends off-centre.
        gear = c.createConstraint(self._robot, FINGER_JOINTS[0], self._robot, FINGER_JOINTS[1],
                                  p.JOINT_GEAR, (1, 0, 0), (0, 0, 0), (0, 0, 0))
        c.changeConstraint(gear, gearRatio=-1, erp=0.1, maxForce=FINGER_FORCE)
        home = list(HOME_ARM) + [FINGER_OPEN, FINGER_OPEN]
        if joint_positions is not None:
            if len(joint_positions) != len(home):
                raise ValueError(
                    f"reset needs {len(home)} joint positions, got {len(joint_positions)}")
            home = [float(q) for q in joint_positions]
        for j, q in zip(self._joint_index.values(), home):
            c.resetJointState(self._robot, j, float(q))
        self.set_joint_targets(JOINT_NAMES, home)

    def _load_objects(self, rng: np.random.Generator) -> None:
        c = self._client
        tray_xy = np.array(_forward_to_world(*TRAY_NOMINAL)) + rng.uniform(
            -TRAY_JITTER, TRAY_JITTER, 2)
        self._tray = c.loadURDF("tray/traybox.urdf", [tray_xy[0], tray_xy[1], TABLE_TOP_Z],
                                useFixedBase=True, globalScaling=TRAY_SCALE)
        positions = self._sample_cube_xy(rng)
        yaws = rng.uniform(-CUBE_MAX_YAW, CUBE_MAX_YAW, len(self._colors))
        self._cubes = {}
        for name, color, (x, y), yaw in zip(self.cube_names, self._colors, positions, yaws):
            body = c.loadURDF("cube_small.urdf", [x, y, TABLE_TOP_Z + CUBE_SIZE / 2 + 1e-3],
                              c.getQuaternionFromEuler((0.0, 0.0, yaw)))
            c.changeVisualShape(body, -1, rgbaColor=COLORS[color])
            c.changeDynamics(body, -1, lateralFriction=CUBE_FRICTION)
            self._cubes[name] = body

    def _sample_cube_xy(self, rng: np.random.Generator) -> list[tuple[float, float]]:
        # Rejection sampling of the whole set: retrying only the last cube could dead-end.
        for _ in range(1000):
            forward = rng.uniform(*CUBE_FORWARD_RANGE, len(self._colors))
            ys = rng.uniform(*CUBE_Y_RANGE, len(self._colors))
            xy = np.array([_forward_to_world(f, y) for f, y in zip(forward, ys)])
            gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
            gaps[np.diag_indices(len(xy))] = np.inf
            if gaps.min(initial=np.inf) >= MIN_CUBE_SPACING:
                return [tuple(v) for v in xy]
        raise ValueError(f"cannot place {len(self._colors)} cubes {MIN_CUBE_SPACING} m apart")

    # ----------------------------------------------------------------- robot
    @property
    def joint_names(self) -> list[str]:
        return list(JOINT_NAMES)

    def set_joint_targets(self, names: Sequence[str], positions: Sequence[float]) -> None:
        """Position targets (rad / m) for any subset of `joint_names`."""
        if len(names) != len(positions):
            raise ValueError(f"{len(names)} names but {len(positions)} positions")
        unknown = [n for n in names if n not in self._joint_index]
        if unknown:
            raise ValueError(f"unknown joints {unknown}; known: {JOINT_NAMES}")
        # setJointMotorControlArray has no maxVelocity argument, so joints are set one by one.
        for name, q in zip(names, positions):
            j = self._joint_index[name]
            force, velocity = self._limits[j]
            self._client.setJointMotorControl2(
                self._robot, j, p.POSITION_CONTROL, targetPosition=float(q), force=force,
                maxVelocity=velocity)

    def step(self, n: int = 1) -> None:
        for _ in range(int(n)):
            self._client.stepSimulation()
        self._steps += int(n)

    @property
    def sim_time(self) -> float:
        """Seconds simulated by `step` since construction.

        A reset does not turn it back, so stamps derived from it stay ordered across episodes.
        """
        return self._steps * self.time_step

    def joint_state(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        states = self._client.getJointStates(self._robot, list(self._joint_index.values()))
        pos, vel, _, eff = (np.array(v, dtype=float) for v in zip(*states))
        return list(JOINT_NAMES), pos, vel, eff

    def gripper_position(self) -> np.ndarray:
        state = self._client.getLinkState(self._robot, GRASP_LINK, computeForwardKinematics=True)
        return np.array(state[4])

    # ----------------------------------------------------------------- objects
    def _pose(self, body: int) -> ObjectPose:
        pos, orn = self._client.getBasePositionAndOrientation(body)
        return ObjectPose(position=tuple(pos), orientation=tuple(orn))

    def object_poses(self) -> dict[str, ObjectPose]:
        poses = {name: self._pose(body) for name, body in self._cubes.items()}
        poses["tray"] = self._pose(self._tray)
        return poses

    def objects_in_tray(self) -> list[str]:
        """Cubes whose centre is over the tray floor and that rest on it (see tasks.py)."""
        poses = self.object_poses()
        return sorted(name for name in self._cubes if cube_in_tray(poses, name))

    # ----------------------------------------------------------------- camera
    def render(self) -> np.ndarray:
        """HxWx3 uint8 RGB image from the fixed front camera (TinyRenderer, no GPU)."""
        _, _, rgba, _, _ = self._client.getCameraImage(
            self.image_width, self.image_height, self._view, self._projection,
            renderer=p.ER_TINY_RENDERER)
        rgba = np.asarray(rgba, dtype=np.uint8).reshape(self.image_height, self.image_width, 4)
        return np.ascontiguousarray(rgba[:, :, :3])

    def camera_intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels, pixel centres at integer coordinates (ROS convention).

        The projection uses a vertical field of view and square pixels, so fx == fy.
        """
        fy = (self.image_height / 2.0) / np.tan(np.radians(CAMERA_FOV_DEG) / 2.0)
        return fy, fy, (self.image_width - 1) / 2.0, (self.image_height - 1) / 2.0

    def camera_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Position (m) and quaternion (x, y, z, w) of `camera_frame_id` in the world frame.

        Optical-frame convention (REP 103): z along the view, x to image right, y to image down.
        """
        forward = np.asarray(CAMERA_TARGET) - self._camera_eye
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, (0.0, 0.0, 1.0))
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        return self._camera_eye.copy(), _quaternion(np.column_stack([right, down, forward]))

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client = None
