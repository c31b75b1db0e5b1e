"""Tabletop world, Panda kinematics and task success checks (headless PyBullet, no ROS)."""
import numpy as np
import pybullet as p
import pytest

from vla_bringup.policy.base import ObjectPose
from vla_bringup.sim.kinematics import (
    HOME_ARM, TABLE_TOP_Z, PandaKinematics, down_orientation)
from vla_bringup.sim.tasks import (
    TaskSpec, cube_in_tray, cube_pushed, cube_stacked, task_measures, task_succeeded)
from vla_bringup.sim.world import JOINT_NAMES, TabletopWorld

CUBES = ["red_cube", "green_cube", "blue_cube", "yellow_cube"]


@pytest.fixture(scope="module")
def kinematics():
    k = PandaKinematics()
    yield k
    k.close()


def _positions(poses):
    return {name: np.array(pose.position + pose.orientation) for name, pose in poses.items()}


def test_same_seed_same_poses_and_different_seed_different(world):
    other = TabletopWorld(seed=7)
    try:
        world.reset(7)
        world.step(100)  # whatever happened before, a reset with the seed repeats the scene
        world.reset(7)
        a, b = _positions(world.object_poses()), _positions(other.object_poses())
        assert sorted(a) == sorted(CUBES + ["tray"])
        for name in a:
            np.testing.assert_allclose(a[name], b[name], atol=1e-9)
        world.reset(8)
        c = _positions(world.object_poses())
        assert max(np.abs(a[n][:2] - c[n][:2]).max() for n in CUBES) > 0.02
    finally:
        other.close()


@pytest.mark.parametrize("seed", range(12))
def test_layout_is_reachable_and_spread_out(world, seed, kinematics):
    world.reset(seed)
    poses = world.object_poses()
    xy = np.array([poses[n].position[:2] for n in CUBES])
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(CUBES))
    assert gaps.min() >= 0.08
    tray = np.array(poses["tray"].position[:2])
    assert np.linalg.norm(xy - tray, axis=1).min() > 0.2
    assert world.objects_in_tray() == []
    for name in CUBES:  # resting on the table, and graspable from above
        assert poses[name].position[2] == pytest.approx(TABLE_TOP_Z + 0.025, abs=2e-3)
        q = kinematics.ik(poses[name].position)
        np.testing.assert_allclose(kinematics.fk(q)[0], poses[name].position, atol=1.5e-3)


def test_joint_state_and_targets(world):
    world.reset(0)
    assert world.joint_names == JOINT_NAMES
    names, q, qd, effort = world.joint_state()
    assert names == JOINT_NAMES and q.shape == qd.shape == effort.shape == (9,)
    np.testing.assert_allclose(q[:7], HOME_ARM, atol=1e-3)
    np.testing.assert_allclose(q[7:], [0.04, 0.04], atol=1e-3)  # gripper open at home
    t0 = world.sim_time
    world.set_joint_targets(["panda_joint1", "panda_finger_joint1", "panda_finger_joint2"],
                            [0.3, 0.0, 0.0])
    world.step(240)
    assert world.sim_time == pytest.approx(t0 + 1.0)
    _, q, _, _ = world.joint_state()
    assert q[0] == pytest.approx(0.3, abs=5e-3)
    np.testing.assert_allclose(q[1:7], HOME_ARM[1:], atol=5e-3)
    np.testing.assert_allclose(q[7:], [0.0, 0.0], atol=2e-3)
    with pytest.raises(ValueError, match="unknown joints"):
        world.set_joint_targets(["elbow"], [0.0])
    world.reset(1)
    assert world.sim_time == pytest.approx(t0 + 1.0)  # a new episode does not turn time back


def test_kinematics_matches_world(world, kinematics):
    world.reset(0)
    position, quat = kinematics.fk(HOME_ARM)
    np.testing.assert_allclose(position, world.gripper_position(), atol=1e-4)
    assert abs(np.dot(quat, down_orientation())) == pytest.approx(1.0, abs=1e-6)
    target = position + [0.05, -0.1, -0.2]
    q = kinematics.ik(target, down_orientation(np.pi - 0.3), rest=HOME_ARM)
    reached, quat = kinematics.fk(q)
    np.testing.assert_allclose(reached, target, atol=1e-3)
    assert abs(np.dot(quat, down_orientation(np.pi - 0.3))) > 0.999
    np.testing.assert_array_equal(q, kinematics.ik(target, down_orientation(np.pi - 0.3)))


def _mask(image, color):
    r, g, b = (image[:, :, i].astype(int) for i in range(3))
    return {"red": (r > 150) & (g < 70) & (b < 70), "blue": (b > 150) & (r < 70) & (g < 110)}[color]


def test_render_shows_cubes_where_the_intrinsics_put_them(world):
    world.reset(2)
    image = world.render()
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    fx, fy, cx, cy = world.camera_intrinsics()
    eye, quat = world.camera_pose()
    rotation = np.array(p.getMatrixFromQuaternion(quat)).reshape(3, 3)
    poses = world.object_poses()
    columns = {}
    for color in ("red", "blue"):
        mask = _mask(image, color)
        assert mask.sum() > 30, f"{color} cube not visible"
        rows, cols = np.nonzero(mask)
        x, y, z = rotation.T @ (np.array(poses[f"{color}_cube"].position) - eye)
        assert abs(fx * x / z + cx - cols.mean()) < 3 and abs(fy * y / z + cy - rows.mean()) < 4
        columns[color] = cols.mean()
    # Left in the image is world +y (the convention of tasks.py).
    red_y, blue_y = poses["red_cube"].position[1], poses["blue_cube"].position[1]
    assert (columns["red"] < columns["blue"]) == (red_y > blue_y)
    assert world.camera_frame_id == "camera_optical_frame"


def test_camera_jitter_moves_the_eye_only():
    plain, jittered = TabletopWorld(seed=3), TabletopWorld(seed=3, camera_jitter_m=0.03)
    try:
        offset = jittered.camera_pose()[0] - plain.camera_pose()[0]
        assert 0 < np.abs(offset).max() <= 0.03
        assert plain.object_poses() == jittered.object_poses()
    finally:
        plain.close()
        jittered.close()


def test_grasp_holds_the_cube_when_lifted(world, kinematics):
    world.reset(1)
    pose = world.object_poses()["red_cube"]
    cube = np.array(pose.position)
    yaw = np.pi + p.getEulerFromQuaternion(pose.orientation)[2]

    def move(position, fingers, seconds):
        arm = kinematics.ik(position, down_orientation(yaw))
        world.set_joint_targets(JOINT_NAMES, list(arm) + [fingers, fingers])
        world.step(int(seconds * 240))

    move(cube + [0, 0, 0.12], 0.04, 1.5)
    move(cube, 0.04, 1.0)
    move(cube, 0.0, 0.5)
    move(cube + [0, 0, 0.2], 0.0, 1.0)
    move(cube + [0.1, -0.15, 0.2], 0.0, 1.0)  # carry it sideways as well
    held = np.array(world.object_poses()["red_cube"].position)
    assert held[2] > cube[2] + 0.18
    assert np.linalg.norm(held - world.gripper_position()) < 0.01
    _, q, _, _ = world.joint_state()
    assert q[7] == pytest.approx(0.025, abs=3e-3) and q[8] == pytest.approx(0.025, abs=3e-3)


def _pose(x, y, z, yaw=0.0):
    return ObjectPose((x, y, z), tuple(p.getQuaternionFromEuler((0, 0, yaw))))


def test_success_checks():
    table = TABLE_TOP_Z + 0.025
    before = {"tray": _pose(0.1, -0.35, TABLE_TOP_Z), "red_cube": _pose(0.1, 0.0, table),
              "blue_cube": _pose(0.2, 0.1, table)}
    assert not cube_in_tray(before, "red_cube")
    in_tray = dict(before, red_cube=_pose(0.15, -0.3, TABLE_TOP_Z + 0.031))
    assert cube_in_tray(in_tray, "red_cube")
    assert not cube_in_tray(dict(before, red_cube=_pose(0.1, -0.35, TABLE_TOP_Z + 0.2)),
                            "red_cube")  # still held above it
    pushed_left = dict(before, red_cube=_pose(0.11, 0.09, table, 0.3))
    assert cube_pushed(before, pushed_left, "red_cube", "left")
    assert not cube_pushed(before, pushed_left, "red_cube", "right")
    assert not cube_pushed(before, dict(before, red_cube=_pose(0.1, 0.07, table)),
                           "red_cube", "left")
    stacked = dict(before, red_cube=_pose(0.21, 0.11, table + 0.05))
    assert cube_stacked(stacked, "red_cube", "blue_cube")
    assert not cube_stacked(stacked, "blue_cube", "red_cube")
    assert task_succeeded(TaskSpec("pick_place", "red_cube", "tray"), before, in_tray)
    assert task_succeeded(TaskSpec("push", "red_cube", "left"), before, pushed_left)
    assert task_succeeded(TaskSpec("stack", "red_cube", "blue_cube"), before, stacked)
    assert not task_succeeded(TaskSpec("stack", "red_cube", "blue_cube"), before, before)
    with pytest.raises(ValueError):
        TaskSpec("push", "red_cube", "tray")
    with pytest.raises(ValueError):
        TaskSpec("stack", "red_cube", "red_cube")
    with pytest.raises(ValueError, match="no object"):
        cube_in_tray(before, "green_cube")


def test_task_measures_say_how_far_from_the_check():
    table = TABLE_TOP_Z + 0.025
    before = {"tray": _pose(0.1, -0.35, TABLE_TOP_Z), "red_cube": _pose(0.1, 0.0, table),
              "blue_cube": _pose(0.2, 0.1, table)}
    short_push = dict(before, red_cube=_pose(0.1, 0.05, table))
    measures = task_measures(TaskSpec("push", "red_cube", "left"), before, short_push)
    assert measures["pushed_m"] == pytest.approx(0.05)  # 3 cm short of the 8 the check wants
    assert measures["target_moved_m"] == pytest.approx(0.05)
    wrong_way = task_measures(TaskSpec("push", "red_cube", "right"), before, short_push)
    assert wrong_way["pushed_m"] == pytest.approx(-0.05)
    off_centre = dict(before, red_cube=_pose(0.23, 0.1, table + 0.05))
    stack = task_measures(TaskSpec("stack", "red_cube", "blue_cube"), before, off_centre)
    assert stack["stack_offset_xy_m"] == pytest.approx(0.03)
    assert stack["height_error_m"] == pytest.approx(0.0, abs=1e-9)
    in_tray = dict(before, red_cube=_pose(0.15, -0.3, TABLE_TOP_Z + 0.031))
    tray = task_measures(TaskSpec("pick_place", "red_cube", "tray"), before, in_tray)
    assert tray["tray_offset_xy_m"] == pytest.approx(0.05)
    assert tray["height_error_m"] == pytest.approx(0.0, abs=1e-9)


def test_reset_can_keep_the_arm_where_it_is():
    world = TabletopWorld(seed=1)
    try:
        _, home, _, _ = world.joint_state()
        bent = home + np.array([0.3, -0.2, 0.1, 0.2, 0.0, 0.1, 0.0, -0.02, -0.02])
        world.reset(2, joint_positions=bent)
        _, positions, _, _ = world.joint_state()
        np.testing.assert_allclose(positions[:7], bent[:7], atol=0.02)
        with pytest.raises(ValueError, match="9 joint positions"):
            world.reset(2, joint_positions=bent[:7])
    finally:
        world.close()


def test_a_client_interrupted_while_connecting_is_cleaned_up_quietly(monkeypatch):
    # A launch stopping a node that is still starting: SIGINT lands inside pybullet.connect.
    import gc
    import sys

    from vla_bringup.sim.kinematics import DirectClient

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr(p, "connect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        DirectClient()
    gc.collect()
    assert unraisable == []  # before: AttributeError '_client' from BulletClient.__del__
    monkeypatch.undo()
    client = DirectClient()  # a normal start still connects, and disconnects on collection
    assert client._client >= 0 and client.getNumBodies() == 0
    del client
    gc.collect()
