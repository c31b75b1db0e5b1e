import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vla_bringup.core.chunk_schedule import ChunkScheduler, TimedChunk, advance_rows, lead_shift
from vla_bringup.policy.base import ActionChunk

JOINTS = ("j1", "j2", "j3")


def chunk(start=0.0, rows=None, dt=0.1, skill="s1", cid=1, done=False, names=JOINTS):
    rows = np.arange(1.0, 6.0)[:, None] * np.array([1.0, 10.0, -1.0]) if rows is None else rows
    return TimedChunk(start, dt, rows, names, skill, cid, skill_done=done)


def scheduler(anchor=(0.0, 0.0, 0.0), **kwargs):
    sched = ChunkScheduler(JOINTS, **kwargs)
    sched.set_skill("s1")
    if anchor is not None:
        sched.set_anchor(anchor)
    return sched


def test_nothing_accepted_gives_none_and_starved():
    sched = scheduler()
    assert sched.sample(0.0) is None
    assert sched.starved(0.0)
    assert sched.time_since_last_chunk(5.0) == math.inf
    assert sched.current_chunk is None


def test_interpolates_rows_by_absolute_time():
    sched = scheduler()
    c = chunk()
    assert sched.add(c, now=0.0) == (True, "ok")
    for k in range(5):
        np.testing.assert_allclose(sched.sample(0.1 * (k + 1)), c.positions[k], atol=1e-9)
    np.testing.assert_allclose(sched.sample(0.25), (c.positions[1] + c.positions[2]) / 2)


def test_before_first_row_glides_from_anchor():
    sched = scheduler(anchor=(2.0, 2.0, 2.0))
    c = chunk()
    sched.add(c, now=0.0)
    np.testing.assert_allclose(sched.sample(0.0), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(sched.sample(0.05), (np.array([2.0, 2.0, 2.0]) + c.positions[0]) / 2)


def test_past_part_of_late_chunk_is_skipped():
    sched = scheduler()
    c = chunk()
    assert sched.add(c, now=0.32)[0]  # arrives 320 ms after its observation
    np.testing.assert_allclose(sched.sample(0.32), 0.8 * c.positions[2] + 0.2 * c.positions[3])


def test_hold_after_end_and_starved():
    sched = scheduler()
    c = chunk()
    sched.add(c, now=0.0)
    assert not sched.starved(0.3)
    np.testing.assert_allclose(sched.sample(2.0), c.positions[-1])
    assert sched.starved(2.0)
    np.testing.assert_allclose(sched.time_since_last_chunk(2.0), 2.0)


def test_output_is_a_fresh_array():
    sched = scheduler()
    c = chunk()
    sched.add(c, now=0.0)
    out = sched.sample(1.0)
    out[:] = 99.0
    np.testing.assert_allclose(sched.sample(1.0), c.positions[-1])


def test_blend_reaches_new_chunk_after_blend_time():
    sched = scheduler(blend_time_s=0.1)
    sched.add(chunk(), now=0.0)
    new = chunk(start=0.2, rows=np.full((10, 3), -5.0), cid=2)
    before = sched.sample(0.25)
    assert sched.add(new, now=0.25)[0]
    np.testing.assert_allclose(sched.sample(0.25), before)  # no jump at the switch
    np.testing.assert_allclose(sched.sample(0.36), new.positions[0])


@settings(max_examples=60, deadline=None)
@given(
    old_rows=arrays(np.float64, (6, 3), elements=st.floats(-3, 3)),
    new_rows=arrays(np.float64, (6, 3), elements=st.floats(-3, 3)),
    new_start=st.floats(0.0, 0.4),
    accept_delay=st.floats(0.0, 0.15),
    blend=st.floats(0.02, 0.3),
)
def test_blend_stays_between_trajectories_and_is_continuous(
        old_rows, new_rows, new_start, accept_delay, blend):
    dt = 0.1
    old, new = chunk(rows=old_rows, dt=dt), chunk(start=new_start, rows=new_rows, dt=dt, cid=2)
    accept = new_start + accept_delay
    sched = scheduler(blend_time_s=blend)
    old_only = scheduler(blend_time_s=blend)
    for s in (sched, old_only):
        assert s.add(old, now=0.0)[0]
    before = sched.sample(accept)
    assert sched.add(new, now=accept)[0]
    new_only = scheduler(anchor=before, blend_time_s=blend)
    new_only.add(new, now=accept)
    np.testing.assert_allclose(sched.sample(accept), before, atol=1e-9)
    for t in np.linspace(accept, accept + blend * 1.2, 40):
        out, a, b = sched.sample(t), old_only.sample(t), new_only.sample(t)
        assert np.all(out >= np.minimum(a, b) - 1e-9) and np.all(out <= np.maximum(a, b) + 1e-9)
        # The departure from the old trajectory grows linearly with the elapsed blend fraction,
        # so the output is as continuous as the two trajectories themselves.
        weight = min((t - accept) / blend, 1.0)
        np.testing.assert_allclose(np.abs(out - a), weight * np.abs(b - a), atol=1e-9)


def test_new_skill_drops_old_chunks_and_holds():
    sched = scheduler()
    sched.add(chunk(), now=0.0)
    held = sched.sample(0.2)
    sched.set_skill("s2")
    assert sched.current_chunk is None
    np.testing.assert_allclose(sched.sample(0.3), held)
    assert sched.add(chunk(start=0.25, cid=2, skill="s1"), now=0.3) == (False, "stale_skill")
    assert sched.add(chunk(start=0.25, cid=2, skill="s2"), now=0.3) == (True, "ok")
    np.testing.assert_allclose(sched.sample(0.3), held)  # the new skill starts where we held


def test_rejects_without_active_skill():
    sched = ChunkScheduler(JOINTS)
    assert sched.add(chunk(), now=0.0) == (False, "no_active_skill")


def test_out_of_order_dropped():
    sched = scheduler()
    assert sched.add(chunk(start=0.2, cid=5), now=0.3)[0]
    assert sched.add(chunk(start=0.1, cid=6), now=0.3) == (False, "out_of_order")
    assert sched.add(chunk(start=0.2, cid=5), now=0.3) == (False, "out_of_order")
    assert sched.rejected["out_of_order"] == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected(bad):
    rows = np.ones((4, 3))
    rows[2, 1] = bad
    assert scheduler().add(chunk(rows=rows), now=0.0) == (False, "non_finite")


def test_too_old_and_expired():
    sched = scheduler(max_chunk_age_s=1.0)
    assert sched.add(chunk(start=0.0, dt=1.0), now=1.5) == (False, "too_old")
    assert sched.add(chunk(start=0.0), now=0.5) == (False, "expired")


def test_joint_names_checked_and_reordered():
    sched = scheduler()
    assert sched.add(chunk(names=("j1", "j2", "x")), now=0.0) == (False, "joint_mismatch")
    assert sched.add(chunk(rows=np.ones((3, 2)), names=("j1", "j2")), now=0.0) == (
        False, "joint_mismatch")
    rows = np.tile([[1.0, 2.0, 3.0]], (4, 1))
    assert sched.add(chunk(rows=rows, names=("j3", "j1", "j2")), now=0.0)[0]
    np.testing.assert_allclose(sched.sample(1.0), [2.0, 3.0, 1.0])
    assert sched.current_chunk.joint_names == JOINTS


def test_done_reached_after_done_chunk_ran_to_its_end():
    sched = scheduler()
    c = chunk(done=True)
    sched.add(c, now=0.0)
    assert not sched.done_reached(0.3)
    assert sched.last_done_time is None
    sched.sample(0.6)
    assert sched.done_reached(0.6)
    assert sched.last_done_time == pytest.approx(c.end_time)


def test_done_chunk_replaced_before_its_end_is_not_done():
    sched = scheduler()
    sched.add(chunk(done=True), now=0.0)
    sched.add(chunk(start=0.2, cid=2, done=False), now=0.2)
    assert not sched.done_reached(0.6)


def test_from_action_chunk():
    action = ActionChunk(JOINTS, np.ones((2, 3)), 0.05, skill_done=True, progress=0.9)
    timed = TimedChunk.from_action_chunk(action, start_time=3.0, skill_id="s1", chunk_id=7)
    assert timed.end_time == pytest.approx(3.1)
    assert timed.skill_done and timed.progress == pytest.approx(0.9)


def test_advance_rows_gives_the_chunk_later_in_time():
    rows = np.stack([np.arange(5.0), 10 * np.arange(5.0)], axis=1)  # row k: value k, 10 k
    np.testing.assert_array_equal(advance_rows(rows, 0.1, 0.0), rows)
    # 0.25 s at 0.1 s per row: row k becomes row k + 2.5, the last row held past the end
    np.testing.assert_allclose(advance_rows(rows, 0.1, 0.25)[:, 0], [2.5, 3.5, 4, 4, 4])
    np.testing.assert_allclose(advance_rows(rows, 0.1, 0.25)[:, 1], [25, 35, 40, 40, 40])
    np.testing.assert_allclose(advance_rows(rows, 0.2, 0.1)[:, 0], [0.5, 1.5, 2.5, 3.5, 4])
    np.testing.assert_array_equal(advance_rows(rows, 0.1, 9.0), np.repeat(rows[-1:], 5, 0))
    for shift, dt in ((-0.1, 0.1), (math.nan, 0.1), (0.1, 0.0)):
        with pytest.raises(ValueError, match="shift_s"):
            advance_rows(rows, dt, shift)


def test_an_advanced_chunk_samples_as_the_original_later_and_the_shift_is_bounded():
    rows = np.arange(1.0, 9.0)[:, None] * np.array([1.0, 10.0, -1.0])
    sched = scheduler(blend_time_s=0.0)
    sched.add(chunk(start=0.0, rows=advance_rows(rows, 0.1, 0.25)), now=0.0)
    original = chunk(start=0.0, rows=rows)
    for t in np.arange(0.1, 0.55, 0.05):  # from the first row on: the original 0.25 s later
        expected = scheduler(anchor=None)
        expected.add(original, now=0.0)
        np.testing.assert_allclose(sched.sample(t), expected.sample(t + 0.25), atol=1e-12)
    np.testing.assert_array_equal(advance_rows(rows[:1], 0.1, 0.3), rows[:1])  # horizon 1
    assert lead_shift(0.25, 0.1) == pytest.approx(0.15)
    assert lead_shift(0.25, 0.4) == 0.0  # a late chunk is not advanced
    assert lead_shift(0.25, -3.0) == 0.25  # a stamp ahead of the clock: no more than the lead
    assert lead_shift(0.0, 0.1) == 0.0
