"""A pick that says done with empty fingers is started again with the fingers open."""
from __future__ import annotations

import numpy as np
import pytest

from vla_bringup.core.chunk_schedule import TimedChunk
from vla_bringup.policy.base import ActionChunk
from vla_bringup.policy.scripted_expert import ScriptedExpert
from vla_bringup.sim.demonstrations import GeneratorConfig, run_episode, sample_episode
from vla_bringup.core.skill_executor import (GraspCheck, SkillExecutor, SkillState, SkillTiming,
                                             grasp_check_for, release_check_for)

NAMES = ("a", "b", "finger_1", "finger_2")
TIMING = SkillTiming(timeout_s=30.0, first_chunk_timeout_s=2.0, policy_timeout_s=0.3,
                     starvation_timeout_s=1.0)
GRASP = GraspCheck(empty_grip_m=0.01, reopen_s=0.8, attempts=2, finger_indices=(2, 3),
                   open_m=0.04)
EMPTY = [0.3, -0.3, 0.0005, 0.0005]  # fingers closed on nothing
HOLDING = [0.3, -0.3, 0.025, 0.025]  # a 5 cm cube between them


def chunk(start, skill_id="pick-1", chunk_id=1, done=False, rows=5, dt=0.1, fingers=0.0,
          progress=0.5):
    times = dt * np.arange(1, rows + 1)
    positions = np.stack([times, -times, np.full(rows, fingers), np.full(rows, fingers)], axis=1)
    return TimedChunk(start, dt, positions, NAMES, skill_id, chunk_id, done, progress)


def picking(grasp=GRASP):
    executor = SkillExecutor(NAMES, blend_time_s=0.05)
    executor.start("pick-1", 0.0, TIMING, [0.0, 0.0, 0.04, 0.04], grasp)
    assert executor.on_chunk(chunk(0.0), 0.05) == (True, "ok")
    executor.command(0.3)
    return executor


def test_a_pick_that_holds_something_succeeds():
    executor = picking()
    assert executor.on_chunk(chunk(0.3, chunk_id=2, done=True), 0.35, HOLDING) == (True, "ok")
    assert executor.status().state is SkillState.SUCCEEDED


def test_a_hand_that_never_closed_holds_nothing_either():
    executor = picking()
    assert executor.on_chunk(chunk(0.3, chunk_id=2, done=True), 0.35,
                             [0.3, -0.3, 0.0395, 0.0395]) == (False, "grasp_missed")


def test_a_cube_gripped_across_a_corner_counts_as_held():
    executor = picking()  # a 5 cm cube turned 30 degrees keeps each finger 3.4 cm out
    assert executor.on_chunk(chunk(0.3, chunk_id=2, done=True), 0.35,
                             [0.3, -0.3, 0.034, 0.034]) == (True, "ok")


def test_empty_fingers_open_and_the_policy_starts_the_pick_again():
    executor = picking()
    before = executor.command(0.34)
    assert executor.on_chunk(chunk(0.3, chunk_id=2, done=True), 0.35, EMPTY) == (
        False, "grasp_missed")
    status = executor.status()
    assert status.state is SkillState.WAITING_FOR_POLICY
    assert "regrasping (1 of 2)" in status.message
    assert status.progress == 0.0  # the chunks so far said 0.5: the pick starts again
    assert executor.skill_id == "pick-1" and executor.policy_skill_id == "pick-1~regrasp1"
    # The policy is told (and resets) only once the fingers have had reopen_s to open.
    assert executor.announced_skill_id(1.1) == "pick-1"
    assert executor.announced_skill_id(1.2) == "pick-1~regrasp1"
    # The arm holds where it was; only the fingers open.
    held = executor.command(0.5)
    np.testing.assert_allclose(held[:2], before[:2], atol=1e-9)
    np.testing.assert_allclose(held[2:], [0.04, 0.04])
    # The old pick's chunks are stale; the new id's count only from frames after the reopening.
    assert executor.on_chunk(chunk(0.4, chunk_id=3), 0.6, EMPTY)[1] == "stale_skill"
    assert executor.on_chunk(chunk(0.9, "pick-1~regrasp1"), 1.0, EMPTY) == (
        False, "regrasp_reopening")
    assert executor.on_chunk(chunk(1.2, "pick-1~regrasp1", fingers=0.04), 1.3,
                             [0.3, -0.3, 0.04, 0.04]) == (True, "ok")
    assert executor.status().state is SkillState.EXECUTING
    assert executor.on_chunk(chunk(2.0, "pick-1~regrasp1", 2, done=True), 2.1, HOLDING)[0]
    assert executor.status().state is SkillState.SUCCEEDED


def test_the_regrasp_waits_for_its_first_chunk_from_its_own_start():
    executor = SkillExecutor(NAMES, blend_time_s=0.05)
    executor.start("pick-1", 0.0, TIMING, [0.0, 0.0, 0.04, 0.04], GRASP)
    for step in range(10):  # a pick that runs 5 s, then says done with empty fingers
        assert executor.on_chunk(chunk(0.5 * step, chunk_id=step + 1), 0.5 * step + 0.05)[0]
        executor.command(0.5 * step + 0.1)
    executor.on_chunk(chunk(5.0, chunk_id=20, done=True), 5.05, EMPTY)
    # The wait counts from the end of the reopening (5.05 + 0.8 s), 2 s of first_chunk_timeout.
    executor.command(7.8)
    assert executor.status().state is SkillState.WAITING_FOR_POLICY
    executor.command(7.9)
    status = executor.status()
    assert status.state is SkillState.FAILED and "no action chunk" in status.message


def test_after_its_attempts_the_pick_fails_saying_why():
    executor = picking()
    for attempt in range(1, 3):
        executor.on_chunk(chunk(attempt, executor.policy_skill_id, 10, done=True),
                          attempt + 0.05, EMPTY)
        assert executor.policy_skill_id == f"pick-1~regrasp{attempt}"
        assert executor.on_chunk(chunk(attempt + 0.9, executor.policy_skill_id, 11),
                                 attempt + 0.95, EMPTY)[0]
    executor.on_chunk(chunk(3.0, executor.policy_skill_id, 12, done=True), 3.05, EMPTY)
    status = executor.status()
    assert status.state is SkillState.FAILED
    assert status.message == "the pick said done with nothing between the fingers (3 grasps)"


def test_a_done_chunk_that_would_be_refused_anyway_changes_nothing():
    executor = picking()
    # From a frame older than the chunk being followed: the scheduler refuses it.
    assert executor.on_chunk(chunk(-0.85, chunk_id=2, done=True), 0.35, EMPTY) == (
        False, "out_of_order")
    assert executor.status().state is SkillState.EXECUTING
    assert executor.policy_skill_id == "pick-1"


def test_after_a_policy_loss_an_empty_pick_fails_instead_of_regrasping():
    executor = picking()
    assert executor.policy_lost(0.32)
    executor.on_chunk(chunk(0.4, chunk_id=2, done=True), 0.45, EMPTY)
    status = executor.status()
    assert status.state is SkillState.FAILED and "(1 grasp)" in status.message


@pytest.mark.parametrize("grasp, measured", [(None, EMPTY), (GRASP, None)])
def test_without_a_check_or_a_measurement_done_is_taken_as_said(grasp, measured):
    executor = picking(grasp)
    assert executor.on_chunk(chunk(0.3, chunk_id=2, done=True), 0.35, measured)[0]
    assert executor.status().state is SkillState.SUCCEEDED


def test_a_new_skill_clears_the_regrasp():
    executor = picking()
    executor.on_chunk(chunk(0.3, chunk_id=2, done=True), 0.35, EMPTY)
    executor.start("place-2", 0.5, TIMING, HOLDING)
    assert executor.policy_skill_id == "place-2" and executor.grasp is None
    assert executor.on_chunk(chunk(0.6, "place-2"), 0.65, EMPTY) == (True, "ok")


@pytest.mark.parametrize("kwargs", [{"empty_grip_m": 0.0}, {"empty_grip_m": 0.039},
                                    {"reopen_s": -1.0}, {"attempts": -1},
                                    {"open_margin_m": -0.001}])
def test_bad_grasp_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        GraspCheck(**kwargs)


class _ClosesOnNothingFirst(ScriptedExpert):
    """The scripted expert, except that its first pick closes the fingers where the arm is (on
    nothing) and then says done, as a learned pick that missed its cube."""

    def __init__(self) -> None:
        self.skill_ids: list[str] = []
        super().__init__()

    def reset(self, skill):
        if skill is not None:
            self.skill_ids.append(skill.skill_id)
        super().reset(skill)

    def infer(self, observation):
        chunk = super().infer(observation)
        if observation.skill.skill != "pick" or len(self.skill_ids) > 1:
            return chunk
        rows = np.tile(observation.joint_positions, (len(chunk.positions), 1))
        rows[:, 7:] = 0.0
        closed = max(observation.joint_positions[7:]) < 0.002
        return ActionChunk(observation.joint_names, rows, 0.1, skill_done=closed)


def test_an_episode_regrasps_a_pick_that_closed_on_nothing():
    """run_episode: the same executor as the skill controller, the policy reset with the
    regrasp's id, the task done all the same; without the check the empty pick ends it."""
    spec = sample_episode(0, families=("pick_place",))
    config = GeneratorConfig(image_size=64, inference_latency_s=0.25)
    policy = _ClosesOnNothingFirst()
    data = run_episode(spec, config, policy, record=False)  # the default: 2 regrasps
    assert data.success, data.error
    assert data.regrasps == 1
    pick_id = spec.skills[0].skill_id
    assert policy.skill_ids == [pick_id, f"{pick_id}~regrasp1", spec.skills[1].skill_id]
    unchecked = run_episode(spec, config, _ClosesOnNothingFirst(), record=False, grasp=None)
    assert not unchecked.success and unchecked.regrasps == 0
    assert unchecked.error == "task check failed after every skill reported done"
    assert unchecked.measures["target_moved_m"] < 0.01
    # With no regrasp: the empty pick fails at once, saying why.
    at_once = run_episode(spec, config, _ClosesOnNothingFirst(), record=False,
                          grasp=GraspCheck(attempts=0))
    assert not at_once.success and at_once.regrasps == 0
    assert "nothing between the fingers (1 grasp)" in at_once.error, at_once.error


def test_only_a_pick_is_grasp_checked():
    assert grasp_check_for("pick", GRASP) is GRASP
    assert grasp_check_for("pick", None) is None
    for skill in ("place", "push", "move"):
        assert grasp_check_for(skill, GRASP) is None


# ---------------------------------------------------------------- a place's "done" lets go
def placing(check=GRASP):
    executor = SkillExecutor(NAMES, blend_time_s=0.05)
    executor.start("place-2", 0.0, TIMING, HOLDING, release_check=check)
    assert executor.on_chunk(chunk(0.0, "place-2", fingers=0.025), 0.05, HOLDING) == (True, "ok")
    return executor


def test_a_place_said_done_with_the_cube_in_the_hand_goes_on_until_it_lets_go():
    executor = placing()
    done_holding = chunk(0.3, "place-2", chunk_id=2, done=True, fingers=0.025, progress=1.0)
    assert executor.on_chunk(done_holding, 0.35, HOLDING) == (True, "ok")  # its motion runs
    status = executor.status()
    assert status.state is SkillState.EXECUTING and status.progress == 0.5  # not its 1.0
    assert executor.dones_while_holding == 1 and "still between the fingers (1)" in status.message
    np.testing.assert_allclose(executor.command(0.5), [0.2, -0.2, 0.025, 0.025])
    released = chunk(0.6, "place-2", chunk_id=3, done=True, fingers=0.04)
    assert executor.on_chunk(released, 0.65, [0.3, -0.3, 0.04, 0.04]) == (True, "ok")
    assert executor.status().state is SkillState.SUCCEEDED


def test_a_place_that_never_lets_go_times_out_saying_so():
    executor = placing()
    for index in range(3):
        executor.on_chunk(chunk(0.3 * (index + 1), "place-2", chunk_id=2 + index, done=True,
                                fingers=0.025), 0.3 * (index + 1) + 0.05, HOLDING)
    executor.command(TIMING.timeout_s + 0.1)
    status = executor.status()
    assert status.state is SkillState.FAILED
    assert "said done 3 times with the object still between the fingers" in status.message


def test_a_refused_done_chunk_is_not_counted_as_said_while_holding():
    executor = placing()
    late_pick = chunk(0.3, "pick-1", chunk_id=9, done=True, fingers=0.025)  # the skill before
    assert executor.on_chunk(late_pick, 0.35, HOLDING) == (False, "stale_skill")
    assert executor.dones_while_holding == 0 and executor.status().message == "executing"


@pytest.mark.parametrize("check, measured", [(None, HOLDING), (GRASP, None), (GRASP, EMPTY)])
def test_a_place_done_counts_without_a_check_a_measurement_or_a_held_object(check, measured):
    executor = placing(check)
    assert executor.on_chunk(chunk(0.3, "place-2", chunk_id=2, done=True), 0.35, measured)[0]
    assert executor.status().state is SkillState.SUCCEEDED


def test_only_a_place_is_release_checked():
    assert release_check_for("place", GRASP) is GRASP
    assert release_check_for("place", None) is None
    for skill in ("pick", "push", "move"):
        assert release_check_for(skill, GRASP) is None


class _PlaceSaysDoneAtOnce(ScriptedExpert):
    """The scripted expert, except that its place's first chunks say done while the cube is
    still in the hand, as a learned policy that reads the place as a finished pick."""

    def __init__(self, premature: int = 3) -> None:
        self.premature = premature
        super().__init__()

    def infer(self, observation):
        chunk = super().infer(observation)
        if observation.skill.skill == "place" and self.premature > 0:
            self.premature -= 1
            return ActionChunk(chunk.joint_names, chunk.positions, chunk.dt, skill_done=True,
                               progress=chunk.progress)
        return chunk


def test_an_episode_goes_on_with_a_place_said_done_too_early():
    """run_episode: without the release check, the early done ends the task with the cube in
    the hand; with it, the place goes on and the cube is put in the tray."""
    spec = sample_episode(0, families=("pick_place",))
    config = GeneratorConfig(image_size=64, inference_latency_s=0.25)
    unchecked = run_episode(spec, config, _PlaceSaysDoneAtOnce(), record=False)
    assert not unchecked.success
    assert unchecked.error == "task check failed after every skill reported done"
    assert unchecked.dones_while_holding == 0  # nothing was checked, so nothing was ignored
    checked = run_episode(spec, config, _PlaceSaysDoneAtOnce(), record=False,
                          release_check=GraspCheck())
    assert checked.success, checked.error
    assert checked.dones_while_holding == 3  # each premature done, counted in the episode


class _PlaceHoldsAndSaysDone(ScriptedExpert):
    """The scripted expert's pick, then a place that keeps the cube in the hand where it is and
    says done at every chunk: the held-out stacks' failure."""

    def infer(self, observation):
        chunk = super().infer(observation)
        if observation.skill.skill != "place":
            return chunk
        rows = np.tile(observation.joint_positions, (len(chunk.positions), 1))
        return ActionChunk(observation.joint_names, rows, chunk.dt, skill_done=True)


def test_a_failed_episode_keeps_the_count_of_dones_said_while_holding():
    spec = sample_episode(0, families=("pick_place",))
    config = GeneratorConfig(image_size=64, inference_latency_s=0.25, skill_timeout_s=10.0)
    data = run_episode(spec, config, _PlaceHoldsAndSaysDone(), record=False,
                       release_check=GraspCheck())
    assert not data.success and "timed out" in data.error, data.error
    assert data.dones_while_holding > 1
    assert f"said done {data.dones_while_holding} times" in data.error, data.error
