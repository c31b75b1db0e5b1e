"""Behaviour of the safety gate (core/safety.py) and its limits file (core/safety_limits.py)."""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest

from vla_bringup.core.safety import ArmSafetyGate, BaseSafetyGate
from vla_bringup.core.safety_limits import ArmLimits, BaseLimits, load_limits_file

PANDA_YAML = Path(__file__).resolve().parents[2] / "config" / "robots" / "panda.yaml"
DT = 0.01
HOME = np.array([0.0, -0.4, 0.0, -2.4, 0.0, 2.0, np.pi / 4, 0.04, 0.04])
ARM = [f"panda_joint{i}" for i in range(1, 8)]


@pytest.fixture(scope="module")
def raw() -> dict:
    return load_limits_file(PANDA_YAML)


@pytest.fixture(scope="module")
def limits(raw) -> ArmLimits:
    return ArmLimits.from_dict(raw)


class Clock:
    """Drives a gate: `run(n)` ticks n control periods and returns the outputs."""

    def __init__(self, gate, t: float = 0.0):
        self.gate, self.t = gate, t

    def run(self, n: int = 1, every=None):
        """`every(t)`, if given, is called before each tick (a publisher at the control rate)."""
        outs = []
        for _ in range(n):
            self.t += DT
            if every is not None:
                every(self.t)
            outs.append(self.gate.tick(self.t))
        return outs


def make_gate(limits, start=HOME, **kwargs):
    gate = ArmSafetyGate(limits, period_s=DT, **kwargs)
    assert gate.update_measured(limits.names, start, 0.0).accepted
    return gate, Clock(gate)


# ---- limits file --------------------------------------------------------------------------------
def test_panda_limits_load(limits, raw):
    assert limits.names == tuple(ARM + ["panda_finger_joint1", "panda_finger_joint2"])
    assert limits.max_velocity[0] == pytest.approx(2.175)
    assert limits.lower[3] == pytest.approx(-3.0718) and limits.upper[3] == pytest.approx(-0.0698)
    np.testing.assert_allclose(limits.margin, [0.05] * 7 + [0.0, 0.0])
    assert np.all(limits.safe_lower < HOME) and np.all(HOME <= limits.safe_upper)
    # The simulated home grasp point (sim/kinematics.py) lies inside the workspace box.
    assert limits.workspace.contains((0.176, 0.0, 0.984))
    assert not limits.workspace.contains((0.176, 0.0, 0.60))  # below the table top
    base = BaseLimits.from_dict(raw)
    assert base.max_linear_velocity == 0.5 and base.holonomic is False


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["joints"]["panda_joint1"].update(lower=3.0), "lower .* must be < upper"),
    (lambda d: d["joints"]["panda_joint2"].update(max_velocity=-1.0), "max_velocity must be > 0"),
    (lambda d: d["joints"]["panda_joint3"].update(max_acceleration=0), "max_acceleration must be"),
    (lambda d: d["joints"]["panda_joint4"].pop("max_effort"), r"missing keys \['max_effort'\]"),
    (lambda d: d["joints"]["panda_joint5"].update(max_velocty=1.0), "unknown keys"),
    (lambda d: d["joints"]["panda_joint6"].update(upper=float("nan")), "must be finite"),
    (lambda d: d["joints"]["panda_joint7"].update(upper="2.9"), "must be a number"),
    (lambda d: d["joints"]["panda_joint7"].update(max_effort=True), "must be a number"),
    (lambda d: d["joints"]["panda_finger_joint1"].pop("margin"), "leaves no room"),
    (lambda d: d["joints"]["panda_joint1"].update(margin=-0.1), "margin must be >= 0"),
    (lambda d: d.update(joints={}), "at least one joint"),
    (lambda d: d.update(joints=[1, 2]), "joints must be a mapping"),
    (lambda d: d.update(position_margins=0.1), "limits file: unknown keys"),
    (lambda d: d["workspace"].update(z=[1.3, 0.63]), "workspace z: lower .* must be < upper"),
    (lambda d: d["workspace"].update(x=[0.1]), r"workspace x must be \[min, max\]"),
])
def test_bad_arm_limits_give_clear_errors(raw, edit, message):
    data = copy.deepcopy(raw)
    edit(data)
    with pytest.raises(ValueError, match=message):
        ArmLimits.from_dict(data)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["base"].update(max_angular_velocity=0.0), "max_angular_velocity must be > 0"),
    (lambda d: d["base"].pop("max_linear_acceleration"), "missing keys"),
    (lambda d: d["base"].update(holonomic="yes"), "holonomic must be true or false"),
    (lambda d: d.pop("base"), "no `base:` section"),
])
def test_bad_base_limits_give_clear_errors(raw, edit, message):
    data = copy.deepcopy(raw)
    edit(data)
    with pytest.raises(ValueError, match=message):
        BaseLimits.from_dict(data)


def test_limits_file_that_is_not_a_mapping_or_not_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_limits_file(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("joints: {a: [1, 2}\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_limits_file(tmp_path / "broken.yaml")


@pytest.mark.parametrize("kwargs, message", [
    ({"period_s": 0.0}, "period_s must be a positive"),
    ({"watchdog_s": float("inf")}, "watchdog_s must be a positive"),
    ({"sources": ()}, "at least one command source"),
    ({"sources": (("a", 1), ("a", 2))}, "unique"),
    ({"sources": (("a", "high"),)}, "priority must be an int"),
    ({"sources": (("a", 1, -0.1),)}, "timeout must be > 0"),
])
def test_bad_gate_configuration(limits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArmSafetyGate(limits, **kwargs)


def test_source_without_timeout_uses_the_watchdog(limits):
    gate = ArmSafetyGate(limits, watchdog_s=0.3, sources=(("teleop", 5),))
    assert gate.status()["sources"]["teleop"]["timeout_s"] == 0.3


# ---- start-up -----------------------------------------------------------------------------------
def test_no_output_and_no_commands_before_joint_state(limits):
    gate = ArmSafetyGate(limits, period_s=DT)
    assert gate.tick(0.0) is None
    verdict = gate.submit("autonomy", limits.names, HOME, 0.0)
    assert not verdict.accepted and verdict.code == "not_ready"
    assert gate.update_measured(limits.names[:3], HOME[:3], 0.0).code == "missing_joint"
    assert gate.update_measured(limits.names, np.full(9, np.nan), 0.0).code == "non_finite"
    assert gate.tick(0.01) is None
    # Extra joints (a robot publishing more than the gate commands) are ignored.
    names = ("extra_joint",) + limits.names[::-1]
    assert gate.update_measured(names, np.r_[7.0, HOME[::-1]], 0.02).accepted
    out = gate.tick(0.03)
    np.testing.assert_array_equal(out.positions, HOME)
    np.testing.assert_array_equal(out.velocities, np.zeros(9))
    assert out.stopped and out.reason.startswith("watchdog") and out.active_source is None


def test_starting_inside_the_margin_holds_without_moving(limits):
    start = HOME.copy()
    start[0] = limits.upper[0] - 0.01  # inside the 0.05 rad margin
    gate, clock = make_gate(limits, start)
    assert gate.tick(0.01).positions[0] == start[0]
    # A command for another joint does not drag joint1 in; a command for joint1 moves it inward.
    gate.submit("autonomy", ["panda_joint2"], [-0.3], clock.t)
    assert clock.run()[0].positions[0] == start[0]
    outs = clock.run(30, every=lambda t: gate.submit("autonomy", ["panda_joint1"], [3.0], t))
    assert all(o.positions[0] <= start[0] for o in outs)
    assert outs[-1].positions[0] == pytest.approx(limits.safe_upper[0])


# ---- rejections ---------------------------------------------------------------------------------
@pytest.mark.parametrize("source, names, values, code, text", [
    ("nobody", ARM, HOME[:7], "unknown_source", "unknown source 'nobody'"),
    ("autonomy", ARM, HOME[:6], "length_mismatch", "7 names but values of shape"),
    ("autonomy", [], [], "empty", "names no joints"),
    ("autonomy", ARM[:6] + ["elbow"], HOME[:7], "unknown_joint", "unknown joints \\['elbow'\\]"),
    ("autonomy", ARM[:6] + ["panda_joint1"], HOME[:7], "duplicate_joint", "panda_joint1"),
    ("autonomy", ARM, np.r_[HOME[:6], np.nan], "non_finite", "panda_joint7"),
    ("autonomy", ARM, np.r_[np.inf, HOME[1:7]], "non_finite", "panda_joint1"),
    ("autonomy", ARM, np.r_[1e6, HOME[1:7]], "implausible", "panda_joint1=1e\\+06"),
    ("autonomy", ARM, np.r_[HOME[:6], -1e300], "implausible", "panda_joint7"),
    ("autonomy", "panda_joint1", [0.1], "bad_names", "not a string"),
    ("autonomy", ["panda_joint1"], ["abc"], "non_numeric", "numbers"),
    ("autonomy", ["panda_joint1"], [[0.1, 0.2]], "length_mismatch", "1 names"),
])
def test_rejections_have_clear_reasons(limits, source, names, values, code, text):
    gate, clock = make_gate(limits)
    verdict = gate.submit(source, names, values, 0.0)
    assert not verdict.accepted and verdict.code == code
    assert re.search(text, verdict.reason), verdict.reason
    assert gate.status()["rejected"] == {code: 1}
    # A rejected command moves nothing.
    assert np.array_equal(clock.run()[0].positions, HOME)


def test_bad_time_and_implausible_jog_are_rejected(limits):
    gate, _ = make_gate(limits)
    assert gate.submit("autonomy", ARM, HOME[:7], float("nan")).code == "bad_time"
    assert gate.submit_jog("teleop", ["panda_joint1"], [30.0], 0.0).code == "implausible"
    assert gate.submit_jog("teleop", ["panda_joint1"], [5.0], 0.0).accepted  # clamped, not junk


def test_a_position_within_one_range_past_the_limit_is_clamped_not_rejected(limits):
    gate, clock = make_gate(limits)
    assert gate.submit("autonomy", ["panda_joint1"], [5.0], 0.0).accepted
    out = clock.run()[0]
    assert "position:panda_joint1" in out.clamped


# ---- motion limits ------------------------------------------------------------------------------
def test_clamped_target_velocity_and_acceleration_limits(limits):
    gate, clock = make_gate(limits)
    vmax, amax = limits.max_velocity[0], limits.max_acceleration[0]
    outs = clock.run(300, every=lambda t: gate.submit("autonomy", ["panda_joint1"], [4.0], t))
    q = np.array([HOME[0]] + [o.positions[0] for o in outs])
    v = np.diff(q) / DT
    assert np.all(np.abs(v) <= vmax + 1e-9)
    assert np.all(np.abs(np.diff(np.r_[0.0, v])) <= amax * DT + 1e-9)
    assert q.max() <= limits.safe_upper[0] + 1e-12
    assert q[-1] == pytest.approx(limits.safe_upper[0]) and v[-1] == 0.0
    assert {"position:panda_joint1", "velocity:panda_joint1", "acceleration:panda_joint1"} <= set(
        outs[5].clamped)
    # Only the commanded joint moved.
    np.testing.assert_array_equal(outs[-1].positions[1:], HOME[1:])
    assert outs[-1].active_source == "autonomy" and not outs[-1].stopped


def test_small_move_lands_exactly_without_overshoot(limits):
    gate, clock = make_gate(limits)
    target = HOME.copy()
    target[1] += 0.2
    target[7:] = 0.0  # close the gripper
    outs = clock.run(200, every=lambda t: gate.submit("autonomy", limits.names, target, t))
    q = np.array([o.positions for o in outs])
    assert np.all(q[:, 1] <= target[1] + 1e-12) and np.all(q[:, 7] >= -1e-12)
    np.testing.assert_allclose(q[-1], target, atol=1e-12)
    assert outs[-1].clamped == []


def test_command_is_reordered_by_name_and_subset_keeps_other_targets(limits):
    a, ca = make_gate(limits)
    b, cb = make_gate(limits)
    target = HOME + 0.1 * np.r_[np.ones(7), -0.1, -0.1]
    ca.run(100, every=lambda t: a.submit("autonomy", limits.names, target, t))
    cb.run(100, every=lambda t: b.submit("autonomy", limits.names[::-1], target[::-1], t))
    np.testing.assert_allclose(a.tick(ca.t + DT).positions, b.tick(cb.t + DT).positions)
    # An arm-only command keeps the fingers where their last target put them.
    outs = ca.run(100, every=lambda t: a.submit("autonomy", ARM, HOME[:7], t))
    np.testing.assert_allclose(outs[-1].positions[:7], HOME[:7], atol=1e-12)
    np.testing.assert_allclose(outs[-1].positions[7:], target[7:], atol=1e-12)


def test_jog_follows_velocity_and_stops_before_the_band_edge(limits):
    gate, clock = make_gate(limits)
    outs = clock.run(60, every=lambda t: gate.submit_jog("teleop", ["panda_joint1"], [1.0], t))
    assert outs[-1].velocities[0] == pytest.approx(1.0)
    assert outs[-1].active_source == "teleop"
    outs += clock.run(400, every=lambda t: gate.submit_jog("teleop", ["panda_joint1"], [1.0], t))
    q = [o.positions[0] for o in outs]
    assert max(q) <= limits.safe_upper[0] + 1e-12
    assert q[-1] == pytest.approx(limits.safe_upper[0], abs=1e-9) and outs[-1].velocities[0] == 0
    assert "position:panda_joint1" in outs[-1].clamped
    v = np.diff(np.r_[HOME[0], q]) / DT
    assert np.all(np.abs(np.diff(np.r_[0.0, v])) <= limits.max_acceleration[0] * DT + 1e-9)


# ---- arbitration --------------------------------------------------------------------------------
def test_teleop_wins_over_autonomy_and_autonomy_resumes_after_teleop_times_out(limits):
    gate, clock = make_gate(limits)

    def both(t):
        gate.submit("autonomy", ["panda_joint1"], [0.5], t)
        if t < 0.5:
            gate.submit("teleop", ["panda_joint1"], [-0.5], t)

    outs = clock.run(160, every=both)
    assert outs[10].active_source == "teleop"
    assert outs[48].positions[0] == pytest.approx(-0.5)
    # teleop's last command (t = 0.49) counts until t = 0.74 (its 0.25 s timeout) ...
    assert outs[72].active_source == "teleop"
    # ... then autonomy, which never stopped sending, takes over.
    assert outs[76].active_source == "autonomy"
    assert outs[-1].positions[0] == pytest.approx(0.5)


def test_source_timeout_then_watchdog_controlled_stop(limits):
    gate, clock = make_gate(limits)
    clock.run(40, every=lambda t: gate.submit("autonomy", ["panda_joint2"], [1.5], t))
    v0 = gate.tick(clock.t).velocities[1]  # same time: autonomy still fresh, cruising
    assert v0 == pytest.approx(limits.max_velocity[1])
    outs = clock.run(60)
    # The 0.1 s timeout of autonomy: fresh for 9 more ticks, stale from the 11th.
    assert all(o.active_source == "autonomy" for o in outs[:9])
    assert all(o.active_source is None for o in outs[10:])
    stop = [o for o in outs if o.active_source is None]
    assert stop[0].stopped and stop[0].reason == "watchdog: no fresh command, stopping"
    a = limits.max_acceleration[1]
    needed = math.ceil(abs(v0) / (a * DT) - 1e-9)
    speeds = [abs(o.velocities[1]) for o in stop]
    assert all(s2 <= s1 for s1, s2 in zip(speeds, speeds[1:]))
    assert speeds[needed - 1] == 0.0 and speeds[needed - 2] > 0.0
    assert stop[-1].reason == "watchdog: no fresh command, holding"
    assert stop[-1].positions[1] == stop[needed - 1].positions[1]
    assert gate.status()["watchdog_tripped"]


def test_a_lost_source_stops_at_the_next_tick_not_at_its_timeout(limits):
    gate, clock = make_gate(limits)
    clock.run(40, every=lambda t: gate.submit("autonomy", ["panda_joint2"], [1.5], t))
    cruising = gate.tick(clock.t)
    assert cruising.active_source == "autonomy" and cruising.velocities[1] > 0.0
    gate.source_lost("autonomy")  # its process exited; its last command is 0 ms old
    gate.source_lost("never_heard_of")  # harmless
    first = clock.run(1)[0]
    assert first.active_source is None and first.reason == "watchdog: no fresh command, stopping"
    # A controlled stop: the speed falls by at most one acceleration step per tick.
    a = limits.max_acceleration[1]
    assert cruising.velocities[1] - first.velocities[1] <= a * DT + 1e-9
    assert first.velocities[1] < cruising.velocities[1]


def test_command_from_the_future_is_stale(limits):
    # After the clock jumps back, a command stamped "later" must not stay fresh until the clock
    # catches up.
    gate, _ = make_gate(limits)
    assert gate.submit("autonomy", ["panda_joint1"], [0.5], 5.0).accepted
    out = gate.tick(1.0)
    assert out.active_source is None and out.stopped


# ---- e-stop and heartbeats ----------------------------------------------------------------------
def test_estop_holds_at_once_is_latched_and_refuses_reset_while_input_active(limits):
    gate, clock = make_gate(limits)
    moving = clock.run(30, every=lambda t: gate.submit("autonomy", ["panda_joint1"], [2.0], t))
    assert moving[-1].velocities[0] > 0.5
    gate.set_estop_input(True)
    out = clock.run(1, every=lambda t: gate.submit("autonomy", ["panda_joint1"], [2.0], t))[0]
    np.testing.assert_array_equal(out.positions, moving[-1].positions)
    np.testing.assert_array_equal(out.velocities, np.zeros(9))
    assert out.stopped and out.reason == "e-stop: e-stop input active"
    assert gate.submit("teleop", ["panda_joint1"], [0.0], clock.t).code == "estop_engaged"
    ok, message = gate.reset(clock.t)
    assert not ok and "input still active" in message
    gate.set_estop_input(False)
    assert gate.estop_engaged  # latched: the input going away is not a reset
    assert clock.run(5)[-1].reason.startswith("e-stop")
    # The arm sagged 1 mrad while stopped: after the reset the gate continues from there.
    sagged = out.positions - 0.001
    gate.update_measured(limits.names, sagged, clock.t)
    assert gate.reset(clock.t) == (True, "e-stop reset")
    after = clock.run(3)
    np.testing.assert_array_equal(after[0].positions, sagged)
    # Commands sent before the e-stop do not come back to life: no source is active.
    assert all(o.active_source is None and not np.any(o.velocities) for o in after)
    assert gate.reset(clock.t) == (True, "e-stop not engaged")
    status = gate.status()
    assert status["estops"] == 1 and status["rejected"]["estop_engaged"] == 2


def test_engage_estop_keeps_the_first_reason(limits):
    gate, clock = make_gate(limits)
    gate.engage_estop("operator pressed stop")
    gate.engage_estop("second")
    assert gate.estop_engaged and gate.estop_reason == "operator pressed stop"
    assert clock.run()[0].reason == "e-stop: operator pressed stop"
    assert gate.reset(clock.t)[0] and not gate.estop_engaged


def test_heartbeat_silence_engages_estop_and_blocks_reset(limits):
    gate, clock = make_gate(limits)
    gate.register_heartbeat("deadman", 0.05)
    # Never heard: the robot must not move.
    assert clock.run()[0].reason == "e-stop: heartbeat silent: deadman"
    assert not gate.reset(clock.t)[0]
    gate.heartbeat("deadman", clock.t)
    assert gate.reset(clock.t)[0]
    outs = clock.run(20, every=lambda t: gate.heartbeat("deadman", t))
    assert not any(o.reason.startswith("e-stop") for o in outs)
    outs = clock.run(10)  # silence
    assert outs[4].reason == "e-stop: heartbeat silent: deadman" and outs[4].stopped
    ok, message = gate.reset(clock.t)
    assert not ok and "heartbeat silent: deadman" in message
    with pytest.raises(ValueError, match="unknown heartbeat"):
        gate.heartbeat("nobody", clock.t)


def test_estop_before_joint_state_is_latched(limits):
    gate = ArmSafetyGate(limits, period_s=DT)
    gate.set_estop_input(True)
    gate.set_estop_input(False)
    assert gate.tick(0.0) is None and gate.estop_engaged
    gate.update_measured(limits.names, HOME, 0.0)
    assert gate.tick(0.01).reason.startswith("e-stop")


# ---- workspace ----------------------------------------------------------------------------------
def test_workspace_box_is_checked_with_forward_kinematics(limits):
    def fk(q):  # toy kinematics: joint1 drives x, joint2 drives z
        if q[2] > 1.0:
            raise RuntimeError("solver failure")
        return (q[0], 0.0, 1.3 + q[1])

    gate, _ = make_gate(limits, forward_kinematics=fk)
    assert gate.status()["workspace_checked"]
    assert gate.submit("autonomy", ["panda_joint1"], [0.3], 0.0).accepted
    verdict = gate.submit("autonomy", ["panda_joint1"], [0.5], 0.0)
    assert verdict.code == "workspace" and "workspace box" in verdict.reason
    assert gate.submit("autonomy", ["panda_joint2"], [0.5], 0.0).code == "workspace"
    assert "solver failure" in gate.submit("autonomy", ["panda_joint3"], [1.5], 0.0).reason
    # Without kinematics the box cannot be checked, and status says so.
    assert not make_gate(limits)[0].status()["workspace_checked"]


def test_status_counts(limits):
    gate, clock = make_gate(limits)
    gate.submit("autonomy", ARM, HOME[:7], 0.0)
    gate.submit("autonomy", ARM, HOME[:6], 0.0)
    gate.submit("teleop", ["panda_joint1"], [5.0], 0.0)
    gate.submit("ghost", ARM, HOME[:7], 0.0)
    clock.run(2)
    status = gate.status()
    assert status["received"] == {"autonomy": 2, "teleop": 1}
    assert status["accepted"] == {"autonomy": 1, "teleop": 1}
    assert status["rejected"] == {"length_mismatch": 1, "unknown_source": 1}
    assert status["active_source"] == "teleop" and status["clamped"]["position"] == 2
    assert status["limits"]["panda_joint1"]["upper"] == pytest.approx(2.8473)
    assert status["ticks"] == 2 and not status["estop_engaged"]
    assert status["initialised"] and status["measured_at"] == 0.0


# ---- mobile base --------------------------------------------------------------------------------
def base_gate(holonomic: bool = True) -> BaseSafetyGate:
    return BaseSafetyGate(BaseLimits(0.5, 1.0, 0.5, 1.5, holonomic=holonomic), period_s=DT)


def test_base_velocity_and_acceleration_limits():
    gate = base_gate()
    clock = Clock(gate)
    outs = clock.run(300, every=lambda t: gate.submit("autonomy", 3.0, 4.0, -5.0, t))
    last = outs[-1]
    assert math.hypot(last.vx, last.vy) == pytest.approx(0.5)
    assert last.vx / last.vy == pytest.approx(0.75)  # direction kept
    assert last.wz == pytest.approx(-1.0)
    assert {"linear_velocity", "angular_velocity"} <= set(last.clamped)
    v = np.array([(o.vx, o.vy) for o in outs])
    assert np.all(np.linalg.norm(np.diff(v, axis=0), axis=1) <= 0.5 * DT + 1e-9)
    assert "linear_acceleration" in outs[0].clamped


def test_base_rejections_watchdog_and_estop():
    gate = base_gate(holonomic=False)
    clock = Clock(gate)
    assert gate.submit("autonomy", float("nan"), 0, 0, 0.0).code == "non_finite"
    assert gate.submit("autonomy", 100.0, 0, 0, 0.0).code == "implausible"
    assert gate.submit("joystick", 0.1, 0, 0, 0.0).code == "unknown_source"
    assert gate.submit("autonomy", "fast", 0, 0, 0.0).code == "non_numeric"
    outs = clock.run(100, every=lambda t: gate.submit("autonomy", 0.4, 0.3, 0.0, t))
    assert outs[-1].vy == 0.0 and "holonomic" in outs[-1].clamped
    assert outs[-1].vx == pytest.approx(0.4)
    outs = clock.run(100)
    stop = [o for o in outs if o.active_source is None]
    assert stop[0].stopped and stop[0].vx > 0.0
    assert stop[math.ceil(0.4 / (0.5 * DT)) - 1].vx == 0.0
    gate.submit("autonomy", 0.4, 0, 0, clock.t)
    clock.run(10, every=lambda t: gate.submit("autonomy", 0.4, 0, 0, t))
    gate.engage_estop("bumper")
    out = clock.run()[0]
    assert (out.vx, out.vy, out.wz) == (0.0, 0.0, 0.0) and out.reason == "e-stop: bumper"
    assert gate.submit("autonomy", 0.4, 0, 0, clock.t).code == "estop_engaged"
    assert gate.reset(clock.t)[0]
    assert gate.status()["limits"]["max_linear_velocity"] == 0.5


def test_panda_workspace_box_with_the_real_kinematics():
    """The shipped limits file and the Panda model agree: home is inside, a reach up is not."""
    import os

    from vla_bringup.sim.kinematics import HOME_ARM, PandaKinematics

    path = os.path.join(os.path.dirname(__file__), "..", "..", "config", "robots", "panda.yaml")
    limits = ArmLimits.from_dict(load_limits_file(path))
    kinematics = PandaKinematics()
    gate = ArmSafetyGate(limits, forward_kinematics=lambda q: kinematics.fk(q[:7])[0])
    home = list(HOME_ARM) + [0.04, 0.04]
    gate.update_measured(limits.names, home, 0.0)
    assert gate.submit("autonomy", limits.names, home, 0.0).accepted
    straight_up = [0.0, 0.3, 0.0, -0.3, 0.0, 2.0, 0.78, 0.04, 0.04]  # grasp point at z = 1.65 m
    verdict = gate.submit("autonomy", limits.names, straight_up, 0.01)
    assert not verdict.accepted and verdict.code == "workspace"


def test_measured_effort_above_the_limit_engages_the_estop():
    path = Path(__file__).resolve().parents[2] / "config" / "robots" / "panda.yaml"
    limits = ArmLimits.from_dict(load_limits_file(path))
    gate = ArmSafetyGate(limits)
    home = [0.0, -0.4, 0.0, -2.4, 0.0, 2.0, 0.78, 0.04, 0.04]
    normal = [20.0, 60.0, 10.0, 20.0, 1.0, 2.0, 0.1, 60.0, 60.0]  # a grasp in the simulator
    gate.update_measured(limits.names, home, 0.0, efforts=normal)
    assert not gate.estop_engaged
    collision = list(normal)
    collision[1] = 120.0  # joint 2 pushing against something
    gate.update_measured(limits.names, home, 0.01, efforts=collision)
    assert gate.estop_engaged and "effort limit: panda_joint2" in gate.estop_reason
    output = gate.tick(0.02)
    assert output.stopped and not output.velocities.any()
