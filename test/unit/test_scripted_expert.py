"""The scripted expert closing the loop on the PyBullet world, without ROS.

`run_skill` is a minimal stand-in for the skill controller: it calls the expert every 0.2 s of
sim time and plays each chunk back at the 240 Hz physics rate by linear interpolation in time.
"""
import numpy as np
import pytest

from vla_bringup.policy.base import ActionChunk, Observation, PolicyBackend, SkillSpec
from vla_bringup.policy.scripted_expert import ScriptedExpert
from vla_bringup.sim.kinematics import PandaKinematics
from vla_bringup.sim.tasks import TaskSpec, task_succeeded

MAX_SPEED = 0.25
SKILL_BUDGET_S = 15.0
INFER_PERIOD_S = 0.2


@pytest.fixture(scope="module")
def expert():
    return ScriptedExpert(horizon=16, dt=0.1, max_speed=MAX_SPEED)


@pytest.fixture(scope="module")
def kinematics():
    k = PandaKinematics()
    yield k
    k.close()


def observe(world, skill, scene=None):
    names, q, _, _ = world.joint_state()
    return Observation(stamp=world.sim_time, joint_names=names, joint_positions=q, skill=skill,
                       scene=world.object_poses() if scene is None else scene)


def assert_speed_limited(kinematics, start, chunk):
    """Consecutive grasp points of the chunk (from `start`) are at most max_speed * dt apart."""
    points = [start] + [kinematics.fk(row[:7])[0] for row in chunk.positions]
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    assert steps.max() <= MAX_SPEED * chunk.dt + 2e-3  # + IK tolerance


def run_skill(world, expert, skill, kinematics):
    """Run one skill closed loop; return the sim time it took, or None if over the budget."""
    expert.reset(skill)
    start = world.sim_time
    steps_per_call = int(round(INFER_PERIOD_S / world.time_step))
    while world.sim_time - start < SKILL_BUDGET_S:
        observation = observe(world, skill)
        chunk = expert.infer(observation)
        assert list(chunk.joint_names) == world.joint_names
        assert 0.0 <= chunk.progress <= 1.0
        assert_speed_limited(kinematics, world.gripper_position(), chunk)
        # Row k is the target for stamp + (k + 1) * dt; before row 0, start from the state.
        times = observation.stamp + chunk.dt * np.arange(chunk.horizon + 1)
        table = np.vstack([observation.joint_positions, chunk.positions])
        # The skill is complete once its last chunk has been executed entirely.
        duration = chunk.horizon * chunk.dt if chunk.skill_done else INFER_PERIOD_S
        for _ in range(int(round(duration / world.time_step)) if chunk.skill_done
                       else steps_per_call):
            t = world.sim_time + world.time_step
            world.set_joint_targets(chunk.joint_names,
                                    [np.interp(t, times, column) for column in table.T])
            world.step()
        if chunk.skill_done:
            assert chunk.progress == 1.0
            return world.sim_time - start
    return None


def run_task(world, expert, kinematics, seed, skills):
    world.reset(seed)
    initial = world.object_poses()
    for i, (kind, target, destination) in enumerate(skills):
        skill = SkillSpec(f"{seed}-{i}", kind, f"{kind} the {target}", target, destination)
        elapsed = run_skill(world, expert, skill, kinematics)
        assert elapsed is not None, f"{kind} {target} {destination} over {SKILL_BUDGET_S} s"
    world.step(48)  # let the scene come to rest before judging
    return initial, world.object_poses()


def test_backend_contract(expert):
    assert isinstance(expert, PolicyBackend)
    assert expert.name == "scripted_expert"
    assert expert.requires_ground_truth and not expert.requires_image


def test_first_chunk_moves_towards_the_cube(world, expert, kinematics):
    world.reset(0)
    skill = SkillSpec("s", "pick", "pick up the red cube", "red_cube")
    expert.reset(skill)
    chunk = expert.infer(observe(world, skill))
    assert isinstance(chunk, ActionChunk)
    assert chunk.positions.shape == (16, 9) and chunk.dt == 0.1
    assert not chunk.skill_done and chunk.progress == 0.0
    np.testing.assert_allclose(chunk.positions[:, 7:], 0.04)  # open to approach
    cube = np.array(world.object_poses()["red_cube"].position)
    start = world.gripper_position()
    end = kinematics.fk(chunk.positions[-1, :7])[0]
    assert np.linalg.norm(end[:2] - cube[:2]) < np.linalg.norm(start[:2] - cube[:2]) - 0.1
    assert_speed_limited(kinematics, start, chunk)


def test_bad_requests_raise(world, expert):
    world.reset(0)
    scene = world.object_poses()
    without_red = {k: v for k, v in scene.items() if k != "red_cube"}
    cases = [
        (SkillSpec("a", "pick", "pick red", "red_cube"), without_red, "red_cube"),
        (SkillSpec("b", "place", "place red", "red_cube", "purple_cube"), scene, "purple_cube"),
        (SkillSpec("c", "push", "push red up", "red_cube", "up"), scene, "push destination"),
        (SkillSpec("d", "wave", "wave", "red_cube"), scene, "no skill"),
    ]
    for skill, case_scene, message in cases:
        expert.reset(skill)
        with pytest.raises(ValueError, match=message):
            expert.infer(observe(world, skill, case_scene))
    skill = SkillSpec("e", "pick", "pick red", "red_cube")
    names, q, _, _ = world.joint_state()
    with pytest.raises(ValueError, match="ground-truth"):
        expert.infer(Observation(stamp=0.0, joint_names=names, joint_positions=q, skill=skill))


def test_reset_starts_the_skill_over(world, expert, kinematics):
    world.reset(0)
    skill = SkillSpec("r", "pick", "pick up the red cube", "red_cube")
    assert run_skill(world, expert, skill, kinematics) is not None
    assert expert.infer(observe(world, skill)).skill_done  # stays done while nothing changes
    expert.reset(skill)
    world.reset(0)  # the cube is back on the table
    chunk = expert.infer(observe(world, skill))
    assert not chunk.skill_done and chunk.progress == 0.0


@pytest.mark.parametrize("seed,cube", [(0, "red_cube"), (1, "green_cube"), (2, "blue_cube"),
                                       (3, "yellow_cube")])
def test_pick_and_place_into_tray(world, expert, kinematics, seed, cube):
    initial, final = run_task(world, expert, kinematics, seed,
                              [("pick", cube, ""), ("place", cube, "tray")])
    assert task_succeeded(TaskSpec("pick_place", cube, "tray"), initial, final)
    assert world.objects_in_tray() == [cube]


@pytest.mark.parametrize("seed,cube,direction", [
    (0, "red_cube", "left"), (1, "green_cube", "left"), (2, "blue_cube", "left"),
    (0, "yellow_cube", "right"), (1, "blue_cube", "right"), (2, "red_cube", "right")])
def test_push(world, expert, kinematics, seed, cube, direction):
    initial, final = run_task(world, expert, kinematics, seed, [("push", cube, direction)])
    assert task_succeeded(TaskSpec("push", cube, direction), initial, final)


@pytest.mark.parametrize("seed,top,bottom", [(0, "red_cube", "blue_cube"),
                                             (1, "yellow_cube", "green_cube"),
                                             (2, "green_cube", "red_cube")])
def test_stack(world, expert, kinematics, seed, top, bottom):
    initial, final = run_task(world, expert, kinematics, seed,
                              [("pick", top, ""), ("place", top, bottom)])
    assert task_succeeded(TaskSpec("stack", top, bottom), initial, final)


def test_contact_via_points_are_tight_in_height_and_loose_across():
    """A grasp point a centimetre beside the cube at its height, or lower, counts as arrived;
    1.5 cm beside it, or a centimetre above it, does not (see CONTACT_HEIGHT, CONTACT_ACROSS)."""
    from vla_bringup.policy.scripted_expert import _State
    cube = np.array([0.5, 0.0, 0.025])

    def state_at(offset):
        return _State(0.0, cube + offset, 0.0, 0.04, {})

    assert state_at([0.01, 0.0, 0.005]).in_contact_at(cube)
    assert state_at([-0.007, 0.007, -0.005]).in_contact_at(cube)
    assert state_at([0.0, 0.0, -0.02]).in_contact_at(cube)
    assert state_at([0.02, 0.0, 0.0]).in_contact_at(cube, across=0.03)  # the tray is wide
    assert not state_at([0.015, 0.0, 0.0]).in_contact_at(cube)
    assert not state_at([0.0, 0.0, 0.01]).in_contact_at(cube)
