"""Property tests of the safety gates over generated command streams (hypothesis).

A stream mixes valid commands, commands with one defect (NaN, inf, huge values, wrong length,
unknown or duplicate names, unknown source), bursts, publishers sending at the control rate
(teleop, autonomy or both interleaved), jogs, gaps (time jumps past every timeout), heartbeats
and e-stop engage / input / reset. A small oracle predicts every verdict, the active source and
the e-stop state; after each stream the outputs are checked against the limits.

VLA_SAFETY_PROPERTY_STREAMS sets the total number of streams (arm + base). The default keeps the
unit run short; `VLA_SAFETY_PROPERTY_STREAMS=100000` is the benchmark-sized run. Run with
`--hypothesis-show-statistics` to see which situations the streams reached (events). Both
tests carry the `slow` marker; `-m "not slow"` skips them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vla_bringup.core.safety import DEFAULT_SOURCES, ArmSafetyGate, BaseSafetyGate
from vla_bringup.core.safety_limits import ArmLimits, BaseLimits, load_limits_file

STREAMS = int(os.environ.get("VLA_SAFETY_PROPERTY_STREAMS", "3000"))
ARM_STREAMS = max(1, STREAMS * 4 // 5)
BASE_STREAMS = max(1, STREAMS - ARM_STREAMS)
DT = 0.01
TOL = 1e-9
HEARTBEAT_TIMEOUT = 0.3

_RAW = load_limits_file(Path(__file__).resolve().parents[2] / "config" / "robots" / "panda.yaml")
LIMITS = ArmLimits.from_dict(_RAW)
NAMES = LIMITS.names
LO, HI = LIMITS.safe_lower, LIMITS.safe_upper
LOWER, UPPER = LIMITS.lower, LIMITS.upper
SPAN = UPPER - LOWER
VMAX, AMAX = LIMITS.max_velocity, LIMITS.max_acceleration
BASE = BaseLimits.from_dict(_RAW)
PRIORITY = {name: prio for name, prio, _ in DEFAULT_SOURCES}
TIMEOUT = {name: timeout for name, _, timeout in DEFAULT_SOURCES}

DEFECTS = {"nan": "non_finite", "inf": "non_finite", "huge": "implausible",
           "wrong_length": "length_mismatch", "unknown_joint": "unknown_joint",
           "duplicate_joint": "duplicate_joint", "empty": "empty"}
ARM_KINDS = ("valid",) * 6 + tuple(DEFECTS)
BASE_KINDS = ("valid",) * 4 + ("nan", "inf", "huge")


def time_budget(streams: int) -> int:
    """pytest-timeout budget, s: pytest.ini gives every test 300 s, and a stream takes about
    2-10 ms on a 2-core machine, so the benchmark-sized run needs more."""
    return max(300, int(0.05 * streams))


PROFILE = settings(deadline=None, database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# "intruder" is unknown to the gate.
source_st = st.sampled_from(("teleop", "teleop", "autonomy", "autonomy", "autonomy", "intruder"))
# Sampled, not st.integers: hypothesis favours small integers, and most streams should move far.
ticks_st = st.sampled_from((1, 3, 8, 12, 40))  # 40 ticks: long enough for any stop
OP_PARAMS = {  # the parameter strategies of each op
    # A publisher (teleop, autonomy or both) at the control rate or slower, for n ticks.
    "stream": (st.sampled_from((("teleop",), ("autonomy",), ("teleop", "autonomy"))),
               st.sampled_from((5, 15, 30, 60)), st.sampled_from((1, 1, 2, 4)), st.booleans()),
    "tick": (ticks_st,),
    "gap": (st.floats(0.05, 1.0),),  # no ticks: the control loop stalled
    "clock_back": (st.floats(0.01, 0.5),),  # the clock jumped backwards
    "burst": (source_st, st.integers(2, 6)),
    "estop": (),
    "estop_input": (st.booleans(),),
    "reset": (),
    "heartbeat": (),
}


def ops_st(weights: dict, submit_kinds: tuple) -> st.SearchStrategy:
    """Ops drawn by weight. Without weights hypothesis spends most streams on e-stop ops, and
    most of those streams never move."""
    params = dict(OP_PARAMS, submit=(source_st, st.sampled_from(submit_kinds), st.booleans()))
    op = {name: st.tuples(st.just(name), *params[name]) for name in weights}
    names = [name for name, weight in weights.items() for _ in range(weight)]
    return st.lists(st.sampled_from(names).flatmap(op.__getitem__), min_size=4, max_size=30)


arm_ops = ops_st({"stream": 8, "tick": 4, "submit": 5, "burst": 1, "gap": 1, "clock_back": 1,
                  "heartbeat": 2, "estop": 1, "estop_input": 1, "reset": 2}, ARM_KINDS)
base_ops = ops_st({"stream": 8, "tick": 4, "submit": 4, "burst": 1, "gap": 1, "clock_back": 1,
                   "estop": 1, "estop_input": 1, "reset": 2}, BASE_KINDS)


class Oracle:
    """What the gate must decide, from the specification alone."""

    def __init__(self, use_heartbeat: bool):
        self.latest: dict[str, float] = {}  # source -> stamp of its last accepted command
        self.engaged = False
        self.stop_pending = False  # engaged since the last tick
        self.stop_tick = False  # this output is the e-stop transition
        self.estop_input = False
        self.use_heartbeat = use_heartbeat
        self.heard = 0.0

    def heartbeat_silent(self, now: float) -> bool:
        return self.use_heartbeat and not 0.0 <= now - self.heard <= HEARTBEAT_TIMEOUT

    def engage(self) -> None:
        if not self.engaged:
            self.stop_pending = True
        self.engaged = True
        self.latest.clear()

    def expected_code(self, source: str, kind: str) -> str:
        if source not in PRIORITY:
            return "unknown_source"
        if kind != "valid":
            return DEFECTS[kind]
        return "estop_engaged" if self.engaged else "accepted"

    def tick(self, now: float):
        """The expected active source. The first output after an engage (even of an e-stop that
        was reset before this tick) is the e-stop transition, where velocity may drop at once."""
        if self.estop_input or self.heartbeat_silent(now):
            self.engage()
        self.stop_tick, self.stop_pending = self.stop_pending, False
        if self.engaged:
            return None
        fresh = [s for s, stamp in self.latest.items() if 0.0 <= now - stamp <= TIMEOUT[s]]
        return max(fresh, key=lambda s: (PRIORITY[s], self.latest[s]), default=None)

    def reset(self, now: float) -> bool:
        if not self.engaged:
            return True
        if self.estop_input or self.heartbeat_silent(now):
            return False
        self.engaged = False
        self.latest.clear()
        return True


class Run:
    """Plays one generated stream against a gate and the oracle, recording every output."""

    def __init__(self, gate, rng: np.random.Generator, use_heartbeat: bool):
        self.gate, self.rng = gate, rng
        self.oracle = Oracle(use_heartbeat)
        self.now = 0.0
        if use_heartbeat:
            gate.register_heartbeat("operator", HEARTBEAT_TIMEOUT)
            gate.heartbeat("operator", self.now)
        self.estopped, self.stop_ticks, self.watchdog = [False], [False], [False]

    def send(self, source: str, kind: str, jog: bool, command=None) -> None:
        """Submit `command` (or a fresh one of `kind`) and check the verdict."""
        if command is None:
            command = self.make_command(kind, jog)
        verdict = self.submit(source, command, jog)
        expected = self.oracle.expected_code(source, kind)
        assert verdict.code == expected, (source, kind, command, verdict, expected)
        assert verdict.accepted == (expected == "accepted")
        if verdict.accepted:
            self.oracle.latest[source] = self.now

    def tick(self) -> None:
        self.now += DT
        expected = self.oracle.tick(self.now)
        out = self.gate.tick(self.now)
        assert out.active_source == expected and out.stopped == (expected is None)
        assert out.reason.startswith(
            "e-stop" if self.oracle.engaged else "watchdog" if expected is None else "following")
        self.record(out)
        self.estopped.append(self.oracle.engaged)
        self.stop_ticks.append(self.oracle.stop_tick)
        self.watchdog.append(expected is None and not self.oracle.engaged)

    def heartbeat(self) -> None:
        if self.oracle.use_heartbeat:
            self.gate.heartbeat("operator", self.now)
            self.oracle.heard = self.now

    def play(self, ops) -> None:
        for op in ops:
            kind = op[0]
            if kind == "tick":
                for _ in range(op[1]):
                    self.tick()
            elif kind == "stream":
                _, publishers, n, every, jog = op
                commands = {s: self.make_command("valid", jog) for s in publishers}
                for k in range(n):
                    if k % every == 0:
                        for source in publishers:
                            self.send(source, "valid", jog, commands[source])
                    self.heartbeat()  # an operator console that is alive
                    self.tick()
            elif kind == "gap":
                self.now += op[1]
            elif kind == "clock_back":
                self.now -= op[1]
            elif kind == "submit":
                self.send(op[1], op[2], op[3])
            elif kind == "burst":
                for _ in range(op[2]):
                    self.send(op[1], "valid", bool(self.rng.random() < 0.3))
            elif kind == "estop":
                self.gate.engage_estop("test")
                self.oracle.engage()
            elif kind == "estop_input":
                self.gate.set_estop_input(op[1])
                self.oracle.estop_input = op[1]
                if op[1]:
                    self.oracle.engage()
            elif kind == "reset":
                self.before_reset()
                assert self.gate.reset(self.now)[0] == self.oracle.reset(self.now)
            elif kind == "heartbeat":
                self.heartbeat()
            assert self.gate.estop_engaged == self.oracle.engaged
        for code in self.gate.status()["rejected"]:
            event(f"rejected: {code}")
        for limit in self.gate.status()["clamped"]:
            event(f"limit acted: {limit}")

    def before_reset(self) -> None:
        """Hook: what the robot reports before a reset."""


# ---- arm --------------------------------------------------------------------------------------
class ArmRun(Run):
    def __init__(self, rng: np.random.Generator, use_heartbeat: bool):
        super().__init__(ArmSafetyGate(LIMITS, period_s=DT), rng, use_heartbeat)
        start = rng.uniform(LO, HI)
        assert self.gate.tick(self.now) is None  # nothing before the first joint state
        assert self.gate.update_measured(NAMES, start, self.now).accepted
        self.positions, self.velocities = [start], [np.zeros(len(NAMES))]

    def submit(self, source, command, jog):
        names, values = command
        send = self.gate.submit_jog if jog else self.gate.submit
        return send(source, names, values, self.now)

    def record(self, out) -> None:
        assert out.names == NAMES
        self.positions.append(out.positions)
        self.velocities.append(out.velocities)

    def before_reset(self) -> None:
        # The robot tracks perfectly: its joint state is the last sent position.
        self.gate.update_measured(NAMES, self.positions[-1], self.now)

    def make_command(self, kind: str, jog: bool):
        """Names (a random subset in random order, or all) and values with the defect `kind`."""
        rng = self.rng
        if kind == "empty":
            return [], []
        count = int(rng.integers(1, len(NAMES) + 1)) if rng.random() < 0.5 else len(NAMES)
        index = rng.permutation(len(NAMES))[:max(count, 2 if kind == "duplicate_joint" else 1)]
        names = [NAMES[i] for i in index]
        if jog:
            scale = VMAX[index] * np.where(rng.random(len(index)) < 0.8, 1.5, 9.5)
            values = rng.uniform(-scale, scale)
        else:  # mostly inside the hard limits; some up to 0.9 of a range beyond (clamped)
            beyond = np.where(rng.random(len(index)) < 0.7, 0.0, 0.9 * SPAN[index])
            values = rng.uniform(LOWER[index] - beyond, UPPER[index] + beyond)
            edge = rng.random(len(index)) < 0.1
            values[edge] = np.where(rng.random(len(index)) < 0.5, LO[index], HI[index])[edge]
        bad = int(rng.integers(len(index)))
        if kind in ("nan", "inf"):
            values[bad] = np.nan if kind == "nan" else rng.choice([np.inf, -np.inf])
        elif kind == "huge":  # just past the rejection threshold, or absurd
            i = index[bad]
            limit = 10.0 * VMAX[i] if jog else max(abs(LOWER[i] - SPAN[i]),
                                                   abs(UPPER[i] + SPAN[i]))
            values[bad] = rng.choice([-1.0, 1.0]) * rng.choice([1.5 * limit, 1e6, 1e300])
        elif kind == "wrong_length":
            values = values[:-1] if rng.random() < 0.5 else np.r_[values, 0.0]
        elif kind == "unknown_joint":
            names[bad] = str(rng.choice(["panda_joint8", "gripper", "PANDA_JOINT1", ""]))
        elif kind == "duplicate_joint":
            names[bad] = names[(bad + 1) % len(names)]
        return names, values

    def check(self) -> None:
        p, v = np.array(self.positions), np.array(self.velocities)
        estopped, stop_ticks = np.array(self.estopped), np.array(self.stop_ticks)
        watchdog = np.array(self.watchdog)
        assert np.all(np.isfinite(p)) and np.all(np.isfinite(v))
        assert np.all(p >= LO - TOL) and np.all(p <= HI + TOL)
        step = np.diff(p, axis=0)
        assert np.all(np.abs(step) <= VMAX * DT + TOL)
        assert np.all(np.abs(v[1:] * DT - step) <= TOL)  # the reported velocity is the real one
        assert np.all(np.abs(np.diff(v, axis=0))[~stop_ticks[1:]] <= AMAX * DT + TOL)
        assert np.all(v[estopped] == 0.0) and np.all(step[estopped[1:]] == 0.0)
        for start, end in runs(watchdog):
            # Every joint stops within ceil(|v| / (a dt)) ticks of the watchdog, then holds.
            need = np.ceil(np.abs(v[start - 1]) / (AMAX * DT) - 1e-9)
            elapsed = np.arange(1, end - start + 1)[:, None]
            assert np.all(np.abs(v[start:end])[elapsed >= need] <= TOL)
        moving = np.any(v != 0.0, axis=1)
        if not moving.any():
            event("the arm never moved")
        if np.any(stop_ticks[1:] & moving[:-1]):
            event("e-stop while moving")
        if any(moving[start - 1] for start, _ in runs(watchdog)):
            event("watchdog stop while moving")
        if np.any(np.isclose(p, LO, rtol=0, atol=1e-9) | np.isclose(p, HI, rtol=0, atol=1e-9)):
            event("a joint at the edge of its band")


def runs(flags: np.ndarray):
    """(start, end) of each maximal run of True, as slice bounds; flags[0] is the initial state."""
    edges = np.flatnonzero(np.diff(np.r_[False, flags, False].astype(int)))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2]) if a > 0]


@pytest.mark.slow
@pytest.mark.timeout(time_budget(ARM_STREAMS))
@settings(PROFILE, max_examples=ARM_STREAMS)
@given(ops=arm_ops, seed=st.integers(0, 2 ** 32 - 1),
       use_heartbeat=st.sampled_from((False, False, False, True)))
def test_arm_gate_properties(ops, seed, use_heartbeat):
    run = ArmRun(np.random.default_rng(seed), use_heartbeat)
    run.play(ops)
    run.check()


# ---- mobile base ------------------------------------------------------------------------------
class BaseRun(Run):
    def __init__(self, rng: np.random.Generator, holonomic: bool):
        self.limits = BaseLimits(BASE.max_linear_velocity, BASE.max_angular_velocity,
                                 BASE.max_linear_acceleration, BASE.max_angular_acceleration,
                                 holonomic)
        super().__init__(BaseSafetyGate(self.limits, period_s=DT), rng, use_heartbeat=False)
        self.velocities = [np.zeros(3)]

    def submit(self, source, command, jog):
        return self.gate.submit(source, *command, self.now)

    def record(self, out) -> None:
        self.velocities.append(np.array([out.vx, out.vy, out.wz]))

    def make_command(self, kind: str, jog: bool) -> np.ndarray:
        rng, lim = self.rng, self.limits
        bound = np.array([lim.max_linear_velocity] * 2 + [lim.max_angular_velocity])
        values = rng.uniform(-1.0, 1.0, 3) * bound * rng.choice([0.5, 1.5, 9.0])
        bad = int(rng.integers(3))
        if kind in ("nan", "inf"):
            values[bad] = np.nan if kind == "nan" else np.inf
        elif kind == "huge":
            values[bad] = rng.choice([-1.0, 1.0]) * rng.choice([11.0 * bound[bad], 1e300])
        return values

    def check(self) -> None:
        lim = self.limits
        v, estopped = np.array(self.velocities), np.array(self.estopped)
        assert np.all(np.isfinite(v))
        lin = np.hypot(v[:, 0], v[:, 1])
        assert np.all(lin <= lim.max_linear_velocity + TOL)
        assert np.all(np.abs(v[:, 2]) <= lim.max_angular_velocity + TOL)
        if not lim.holonomic:
            assert np.all(v[:, 1] == 0.0)
        dv = np.diff(v, axis=0)[~np.array(self.stop_ticks)[1:]]
        assert np.all(np.hypot(dv[:, 0], dv[:, 1]) <= lim.max_linear_acceleration * DT + TOL)
        assert np.all(np.abs(dv[:, 2]) <= lim.max_angular_acceleration * DT + TOL)
        assert np.all(v[estopped] == 0.0)
        for start, end in runs(np.array(self.watchdog)):
            elapsed = np.arange(1, end - start + 1)
            need_lin = math.ceil(lin[start - 1] / (lim.max_linear_acceleration * DT) - 1e-9)
            need_ang = math.ceil(abs(v[start - 1, 2]) / (lim.max_angular_acceleration * DT)
                                 - 1e-9)
            assert np.all(lin[start:end][elapsed >= need_lin] <= TOL)
            assert np.all(np.abs(v[start:end, 2])[elapsed >= need_ang] <= TOL)
            if lin[start - 1] > 0 or v[start - 1, 2] != 0:
                event("watchdog stop while moving")


@pytest.mark.slow
@pytest.mark.timeout(time_budget(BASE_STREAMS))
@settings(PROFILE, max_examples=BASE_STREAMS)
@given(ops=base_ops, seed=st.integers(0, 2 ** 32 - 1),
       holonomic=st.booleans())
def test_base_gate_properties(ops, seed, holonomic):
    run = BaseRun(np.random.default_rng(seed), holonomic)
    run.play(ops)
    run.check()
