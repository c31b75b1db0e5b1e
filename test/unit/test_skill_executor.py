"""The skill executor: success on the policy's word, failure on silence or timeout, hold on stop."""
from __future__ import annotations

import numpy as np

from vla_bringup.core.chunk_schedule import TimedChunk
from vla_bringup.core.skill_executor import SkillExecutor, SkillState, SkillTiming

NAMES = ("a", "b")
TIMING = SkillTiming(timeout_s=10.0, first_chunk_timeout_s=2.0, policy_timeout_s=0.3,
                     starvation_timeout_s=1.0)


def chunk(start, skill_id="s1", chunk_id=1, done=False, rows=5, speed=1.0, dt=0.1):
    times = dt * np.arange(1, rows + 1)
    positions = np.stack([speed * times, -speed * times], axis=1)
    return TimedChunk(start, dt, positions, NAMES, skill_id, chunk_id, done, 0.5)


def started(now=0.0):
    executor = SkillExecutor(NAMES, blend_time_s=0.05)
    executor.start("s1", now, TIMING, measured_positions=[0.0, 0.0])
    return executor


def test_follows_chunks_then_succeeds_when_the_policy_says_done():
    executor = started()
    assert executor.status().state is SkillState.WAITING_FOR_POLICY
    assert executor.on_chunk(chunk(0.0), 0.05) == (True, "ok")
    assert executor.status().state is SkillState.EXECUTING
    target = executor.command(0.2)
    np.testing.assert_allclose(target, [0.2, -0.2], atol=1e-9)
    assert executor.on_chunk(chunk(0.2, chunk_id=2, done=True), 0.25)[0]
    status = executor.status()
    assert status.state is SkillState.SUCCEEDED and status.progress == 1.0


def test_chunks_of_another_skill_are_ignored():
    executor = started()
    accepted, reason = executor.on_chunk(chunk(0.0, skill_id="old"), 0.05)
    assert not accepted and reason == "stale_skill"
    assert executor.status().chunks_received == 0


def test_no_first_chunk_fails_with_a_reason():
    executor = started()
    executor.command(2.5)
    status = executor.status()
    assert status.state is SkillState.FAILED and "no action chunk" in status.message


def test_a_silent_policy_fails_the_skill_and_the_arm_holds():
    executor = started()
    executor.on_chunk(chunk(0.0, rows=20), 0.05)
    moving = executor.command(0.5)
    executor.command(1.2)  # 1.15 s since the last chunk: starved
    status = executor.status()
    assert status.state is SkillState.FAILED and "silent" in status.message
    # Frozen at the last command sent, not following the rest of the chunk (which goes to 2.0).
    np.testing.assert_allclose(executor.command(1.3), moving)
    np.testing.assert_allclose(executor.command(1.8), moving)


def test_cancel_freezes_the_command_where_it_is():
    executor = started()
    executor.on_chunk(chunk(0.0, rows=30), 0.05)
    at_cancel = executor.command(0.4)
    executor.cancel()
    assert executor.status().state is SkillState.CANCELED
    np.testing.assert_allclose(executor.command(1.0), at_cancel)
    assert not executor.on_chunk(chunk(0.5, chunk_id=9), 0.55)[0]


def test_timeout_fails_the_skill():
    executor = started()
    t = 0.0
    for i in range(120):  # keep the policy talking, never done
        executor.on_chunk(chunk(t, chunk_id=i + 1, speed=0.0), t + 0.01)
        t += 0.1
        executor.command(t)
    status = executor.status()
    assert status.state is SkillState.FAILED and "timed out" in status.message


def test_a_new_skill_starts_from_the_held_command():
    executor = started()
    executor.on_chunk(chunk(0.0, done=False, rows=10), 0.05)
    held = executor.command(0.3)
    executor.cancel()
    executor.start("s2", 0.4, TIMING, measured_positions=[5.0, 5.0])
    np.testing.assert_allclose(executor.command(0.45), held)  # not a jump to the measurement


def test_a_quiet_policy_makes_the_arm_hold_then_resume_without_a_jump():
    executor = started()
    executor.on_chunk(chunk(0.0, rows=20), 0.05)
    last_sent = executor.command(0.3)
    executor.command(0.4)  # 0.35 s since the last chunk > policy_timeout_s (0.3 s)
    status = executor.status()
    assert status.state is SkillState.HOLDING
    np.testing.assert_allclose(executor.command(0.6), executor.command(0.9))  # holding
    held = executor.command(0.9)
    assert np.max(np.abs(held - last_sent)) < 0.11  # held near the last command, no jump ahead
    assert executor.on_chunk(chunk(0.85, chunk_id=2, rows=20), 0.9)[0]
    assert executor.status().state is SkillState.EXECUTING
    resumed = executor.command(0.91)
    assert np.max(np.abs(resumed - held)) < 0.05  # resumes from where it held


def test_a_lost_policy_holds_at_once():
    executor = started()
    executor.on_chunk(chunk(0.0, rows=20), 0.05)
    sent = executor.command(0.15)
    assert executor.policy_lost(0.16)  # a running skill: the caller must request the stop
    assert executor.status().state is SkillState.HOLDING and executor.released
    # Released to the safety checker's controlled stop: nothing is streamed.
    assert executor.command(0.2) is None
    # A chunk the dead process sent just before it died, delivered after the stop: refused.
    assert executor.on_chunk(chunk(0.1, chunk_id=2, rows=20), 0.21) == (False, "from_lost_policy")
    assert executor.command(0.25) is None
    # A respawned policy answers a newer observation: followed again, from where the arm is.
    arm = sent + 0.01
    assert not executor.on_chunk(chunk(0.3, chunk_id=1, rows=20), 0.31)[0]  # no arm position
    assert executor.on_chunk(chunk(0.3, chunk_id=1, rows=20), 0.31, arm)[0]
    assert executor.status().state is SkillState.EXECUTING and not executor.released
    np.testing.assert_allclose(executor.command(0.31), arm, atol=1e-9)


def test_after_a_release_the_next_skill_starts_from_the_arm_not_the_last_target():
    executor = started()
    executor.on_chunk(chunk(0.0, rows=20), 0.05)
    last_target = executor.command(0.3)
    executor.policy_lost(0.3)
    for now in (0.4, 1.0, 3.0):  # quiet through the failure that follows the silence
        assert executor.command(now) is None
    assert executor.status().state is SkillState.FAILED
    # A second report after the failure (DDS liveliness of an idle policy) stops nothing.
    assert not executor.policy_lost(3.05)
    arm = last_target - 0.05  # the controlled stop ended short of the last target
    executor.start("s2", 3.1, TIMING, measured_positions=arm)
    np.testing.assert_allclose(executor.command(3.2), arm)


def test_the_default_hold_timeout_lets_a_paced_policy_play_its_chunks():
    # The committed VLA checkpoint reads a frame at most every inference_period_s; with its
    # inference on two loaded cores, chunks came 0.3-0.93 s apart in the live demo. With the
    # default timing the arm must follow every chunk, not hold between them (it held between
    # most of them while the default was 0.3 s).
    from vla_bringup.policy.vla.backend import DEFAULT_CHECKPOINT
    from vla_bringup.policy.vla.model import load_config
    period = load_config(DEFAULT_CHECKPOINT).inference_period_s
    assert SkillTiming().policy_timeout_s >= 2 * period
    executor = SkillExecutor(NAMES, blend_time_s=0.05)
    executor.start("s1", 0.0, SkillTiming(), measured_positions=[0.0, 0.0])
    gaps = [period + 0.03, 0.45, 0.7, period, 0.75]  # s between chunk arrivals
    arrival = 0.05
    for chunk_id, gap in enumerate(gaps, start=1):
        assert executor.on_chunk(chunk(arrival - 0.05, chunk_id=chunk_id, rows=16), arrival)[0]
        for now in np.arange(arrival, arrival + gap, 0.01):
            executor.command(now)
            assert executor.status().state is SkillState.EXECUTING, (chunk_id, now)
        arrival += gap
    # A policy that really went quiet is still held, once the default timeout has passed.
    executor.command(arrival - gaps[-1] + SkillTiming().policy_timeout_s + 0.01)
    assert executor.status().state is SkillState.HOLDING
