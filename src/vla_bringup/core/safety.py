"""The safety gate: the only path from the graph to the robot (no rclpy; the safety node wraps it).

Shape (one implementation shared by the arm and the mobile-base gate, `_GateCore`):
- Arbitration as in twist_mux: every source has a priority and a timeout; the latest valid command
  of the highest-priority source whose command is still fresh wins. A rejected command changes
  nothing, so a source that only sends garbage goes stale and loses.
- Watchdog: no fresh source -> controlled stop (decelerate within the acceleration limit, then
  hold), as MoveIt Servo halts when commands stop.
- E-stop: latched. Engaged by `engage_estop`, by the e-stop input (`/safety/estop`) or by a
  registered heartbeat going silent; `reset` refuses while any of those causes is still present.
  While engaged the output holds with zero velocity at once (see `ArmSafetyGate.tick`).
- Every call answers: `submit*` returns a `Verdict` (never raises on bad input), `tick` returns
  what was really sent plus which limits changed it (`clamped`), `status()` the counters.

Time is a float in seconds from one clock shared by `submit`, `tick` and `heartbeat`. Motion
limits are applied per tick: the gate assumes `tick` runs once every `period_s`.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from vla_bringup.core.safety_limits import ArmLimits, BaseLimits

# A command more than this far outside the limits is garbage (a unit or encoding bug), so it is
# rejected instead of clamped: positions beyond one full joint range past either end, velocities
# above this multiple of the velocity limit.
IMPLAUSIBLE_VELOCITY_FACTOR = 10.0
# A motor saturated exactly at its rated effort is working hard, not colliding: only efforts
# clearly beyond the rating (a collision, an external push, a controller fault) engage the e-stop.
EFFORT_TOLERANCE = 1.05
# Changes smaller than this are rounding, not a limit acting (keeps `clamped` free of noise).
_EPS = 1e-12

SourceSpec = Union[tuple[str, int], tuple[str, int, float]]
DEFAULT_SOURCES: tuple[SourceSpec, ...] = (("teleop", 100, 0.25), ("autonomy", 10, 0.1))


@dataclasses.dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # human readable
    code: str = "accepted"  # machine readable; the key of the rejection counters


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    priority: int  # higher wins
    timeout_s: float  # a command older than this no longer counts


@dataclasses.dataclass(frozen=True)
class GateOutput:
    names: tuple[str, ...]
    positions: np.ndarray  # what is sent, rad / m
    velocities: np.ndarray  # (positions - previous positions) / period
    active_source: Optional[str]
    stopped: bool  # True while e-stopped or in a watchdog stop (not following any source)
    reason: str
    clamped: list[str]  # "<limit>:<joint>" for every limit that changed this output


@dataclasses.dataclass(frozen=True)
class BaseOutput:
    vx: float  # m/s
    vy: float  # m/s
    wz: float  # rad/s
    active_source: Optional[str]
    stopped: bool
    reason: str
    clamped: list[str]  # limit names that changed this output


@dataclasses.dataclass(frozen=True)
class _Command:
    values: np.ndarray
    index: Optional[np.ndarray]  # joints the values are for (arm); None for the base
    is_velocity: bool  # a jog (velocities) rather than position targets
    stamp: float


def _reject(code: str, reason: str) -> Verdict:
    return Verdict(False, reason, code)


class _GateCore:
    """Arbitration, watchdog, e-stop, heartbeats and counters, shared by both gates."""

    def __init__(self, period_s: float, watchdog_s: float, sources: Iterable[SourceSpec]):
        for name, value in (("period_s", period_s), ("watchdog_s", watchdog_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.period_s = float(period_s)
        self.watchdog_s = float(watchdog_s)
        self._sources: dict[str, Source] = {}
        for spec in sources:
            if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
                raise ValueError(f"a source is (name, priority[, timeout_s]), got {spec!r}")
            name, priority = spec[0], spec[1]
            timeout = float(spec[2]) if len(spec) == 3 else self.watchdog_s
            if not isinstance(name, str) or not name or name in self._sources:
                raise ValueError(f"source names must be unique non-empty strings, got {name!r}")
            if isinstance(priority, bool) or not isinstance(priority, int):
                raise ValueError(f"source {name!r}: priority must be an int, got {priority!r}")
            if not (math.isfinite(timeout) and timeout > 0):
                raise ValueError(f"source {name!r}: timeout must be > 0 s, got {timeout}")
            self._sources[name] = Source(name, priority, timeout)
        if not self._sources:
            raise ValueError("at least one command source is needed")
        self._latest: dict[str, _Command] = {}
        self._estop_reason: Optional[str] = None
        self._estop_input = False
        self._heartbeats: dict[str, float] = {}  # name -> timeout_s
        self._heard: dict[str, float] = {}  # name -> last time heard
        self._received: collections.Counter = collections.Counter()
        self._accepted: collections.Counter = collections.Counter()
        self._rejected: collections.Counter = collections.Counter()
        self._clamped: collections.Counter = collections.Counter()
        self._ticks = 0
        self._estops = 0
        self._active: Optional[str] = None
        self._watchdog_tripped = False
        self._last_clamped: list[str] = []

    # ---- submissions -------------------------------------------------------------------------
    def _precheck(self, source: str, now: float) -> Optional[Verdict]:
        if not isinstance(source, str) or source not in self._sources:
            return self._count(_reject(
                "unknown_source", f"unknown source {source!r}; known: {sorted(self._sources)}"))
        self._received[source] += 1
        if not (isinstance(now, (int, float)) and math.isfinite(now)):
            return self._count(_reject("bad_time", f"command time must be finite, got {now!r}"))
        return None

    def _count(self, verdict: Verdict) -> Verdict:
        if not verdict.accepted:
            self._rejected[verdict.code] += 1
        return verdict

    def _store(self, source: str, command: _Command) -> Verdict:
        # Checked last, so a malformed command is counted as malformed even during an e-stop.
        # Commands are refused (not queued) while engaged: nothing sent before the reset may move
        # the robot after it.
        if self._estop_reason is not None:
            return self._count(_reject("estop_engaged", f"e-stop engaged: {self._estop_reason}"))
        self._latest[source] = command
        self._accepted[source] += 1
        return Verdict(True, "accepted")

    def source_lost(self, source: str) -> None:
        """The source's process is gone: drop its last command now rather than at its timeout,
        so the next tick starts the controlled stop (or hands over to the next source)."""
        self._latest.pop(source, None)

    # ---- arbitration and e-stop causes, once per tick ----------------------------------------
    def _is_fresh(self, stamp: float, timeout: float, now: float) -> bool:
        # A stamp from the future means the clock jumped back; trusting it could keep a command
        # alive indefinitely, so it counts as stale.
        return 0.0 <= now - stamp <= timeout

    def _silent_heartbeats(self, now: float) -> list[str]:
        return [name for name, timeout in self._heartbeats.items()
                if name not in self._heard or not self._is_fresh(self._heard[name], timeout, now)]

    def _supervise(self, now: float) -> Optional[_Command]:
        """Engage the e-stop on its causes; return the winning command (None: no fresh source)."""
        if not math.isfinite(now):
            raise ValueError(f"tick time must be finite, got {now!r}")
        self._ticks += 1
        if self._estop_input:
            self.engage_estop("e-stop input active")
        silent = self._silent_heartbeats(now)
        if silent:
            self.engage_estop(f"heartbeat silent: {', '.join(silent)}")
        winner: Optional[Source] = None
        for name, command in self._latest.items():
            src = self._sources[name]
            if self._is_fresh(command.stamp, src.timeout_s, now) and (
                    winner is None or (src.priority, command.stamp)
                    > (winner.priority, self._latest[winner.name].stamp)):
                winner = src
        engaged = self._estop_reason is not None
        self._active = None if engaged or winner is None else winner.name
        self._watchdog_tripped = not engaged and winner is None
        return None if self._active is None else self._latest[self._active]

    def _note_clamped(self, clamped: list[str]) -> list[str]:
        self._last_clamped = clamped
        for limit in {entry.split(":")[0] for entry in clamped}:
            self._clamped[limit] += 1
        return clamped

    # ---- e-stop API --------------------------------------------------------------------------
    @property
    def estop_engaged(self) -> bool:
        return self._estop_reason is not None

    @property
    def estop_reason(self) -> Optional[str]:
        return self._estop_reason

    def engage_estop(self, reason: str = "requested") -> None:
        """Latch the e-stop. The first reason is kept: it is the cause, later ones are echoes."""
        if self._estop_reason is None:
            self._estop_reason = str(reason) or "requested"
            self._estops += 1
            self._latest.clear()
            self._on_estop()

    def set_estop_input(self, active: bool) -> None:
        """State of the e-stop input (`/safety/estop`): True engages; False alone does not reset."""
        self._estop_input = bool(active)
        if self._estop_input:
            self.engage_estop("e-stop input active")

    def register_heartbeat(self, name: str, timeout_s: float) -> None:
        """A source that must call `heartbeat` at least every `timeout_s` (a deadman, an operator
        console). Until first heard it counts as silent, so the robot cannot move without it."""
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)
                and timeout_s > 0):
            raise ValueError(f"heartbeat {name!r}: timeout must be > 0 s, got {timeout_s!r}")
        self._heartbeats[str(name)] = float(timeout_s)

    def heartbeat(self, name: str, now: float) -> None:
        if name not in self._heartbeats:
            raise ValueError(f"unknown heartbeat {name!r}; registered: {sorted(self._heartbeats)}")
        self._heard[name] = float(now)

    def reset(self, now: float) -> tuple[bool, str]:
        """Release the e-stop if none of its causes is still present."""
        if self._estop_reason is None:
            return True, "e-stop not engaged"
        if self._estop_input:
            return False, "reset refused: e-stop input still active"
        silent = self._silent_heartbeats(now)
        if silent:
            return False, f"reset refused: heartbeat silent: {', '.join(silent)}"
        self._estop_reason = None
        self._latest.clear()
        self._on_reset()
        return True, "e-stop reset"

    def _on_estop(self) -> None:
        """Gate-specific: drop the motion state at once, so even an e-stop that is reset before
        the next tick stops the robot."""

    def _on_reset(self) -> None:
        """Gate-specific re-synchronisation after a reset."""

    def status(self) -> dict:
        return {
            "ticks": self._ticks,
            "active_source": self._active,
            "watchdog_tripped": self._watchdog_tripped,
            "estop_engaged": self.estop_engaged,
            "estop_reason": self._estop_reason,
            "estop_input": self._estop_input,
            "estops": self._estops,
            "heartbeats": {n: {"timeout_s": t, "last_heard": self._heard.get(n)}
                           for n, t in self._heartbeats.items()},
            "sources": {s.name: {"priority": s.priority, "timeout_s": s.timeout_s}
                        for s in self._sources.values()},
            "received": dict(self._received),
            "accepted": dict(self._accepted),
            "rejected": dict(self._rejected),
            "clamped": dict(self._clamped),
            "last_clamped": list(self._last_clamped),
        }


def _max_step_to_stop(distance: float, dstep: float) -> float:
    """Largest step for this tick from which braking by `dstep` per tick stops within `distance`.

    Braking from a step s covers s + (s - dstep) + (s - 2 dstep) + ... With s = n dstep + r,
    0 <= r < dstep, that is dstep n (n + 1) / 2 + (n + 1) r; solved for s. Following this profile
    lands exactly on the target, and it is what keeps every output inside the position band.
    """
    if distance <= 0.0:
        return 0.0
    n = math.floor((math.sqrt(8.0 * distance / dstep + 1.0) - 1.0) / 2.0)
    # The square root may round n one too high, which would overshoot; one too low is only
    # slightly conservative (r is capped at dstep below).
    if dstep * n * (n + 1) / 2.0 > distance:
        n -= 1
    r = min(max((distance - dstep * n * (n + 1) / 2.0) / (n + 1), 0.0), dstep)
    return n * dstep + r


def _braking_distance(step: float, dstep: float) -> float:
    """Signed distance still covered after a tick that moved by `step`, braking by `dstep`."""
    s = abs(step)
    m = math.floor(s / dstep)
    return math.copysign(m * s - dstep * m * (m + 1) / 2.0, step)


@dataclasses.dataclass(frozen=True)
class _Joint:
    """Per-joint constants of the motion limiter, in per-tick units."""

    name: str
    lo: float  # band: [lower + margin, upper - margin]
    hi: float
    max_step: float  # max_velocity * period
    dstep: float  # max_acceleration * period^2: the most the step may change per tick


class ArmSafetyGate(_GateCore):
    """Joint-position gate for the arm; outputs one position per joint per tick.

    The per-tick limiter works joint by joint on plain floats: with 9 joints that is several
    times faster than numpy, whose per-call overhead dominates on arrays this small.
    """

    def __init__(self, limits: ArmLimits, period_s: float = 0.01, watchdog_s: float = 0.1,
                 sources: Iterable[SourceSpec] = DEFAULT_SOURCES,
                 forward_kinematics: Optional[Callable[[np.ndarray], Sequence[float]]] = None):
        """`forward_kinematics(positions in limits.names order) -> (x, y, z)` of the end
        effector in the world frame; with it, position targets outside `limits.workspace` are
        rejected. Without it the workspace box is not checked (status()["workspace_checked"])."""
        super().__init__(period_s, watchdog_s, sources)
        self.limits = limits
        self.names = limits.names
        self._index = {name: i for i, name in enumerate(self.names)}
        self._lower, self._upper = limits.lower, limits.upper
        self._max_effort = limits.max_effort.tolist()  # read per joint state: built once
        self._band_lo, self._band_hi = limits.safe_lower, limits.safe_upper
        self._span = self._upper - self._lower
        self._max_velocity, self._max_acceleration = limits.max_velocity, limits.max_acceleration
        self._joints = tuple(
            _Joint(name, float(lo), float(hi), float(v) * self.period_s,
                   float(a) * self.period_s ** 2)
            for name, lo, hi, v, a in zip(self.names, self._band_lo, self._band_hi,
                                          self._max_velocity, self._max_acceleration))
        self._fk = forward_kinematics if limits.workspace is not None else None
        self._measured: Optional[list[float]] = None
        self._measured_at: Optional[float] = None  # for status(): a stale joint state shows
        self._pos: Optional[list[float]] = None  # last sent
        self._step: list[float] = []  # last sent position change
        self._target: list[float] = []  # held position target

    # ---- inputs ------------------------------------------------------------------------------
    def update_measured(self, names: Sequence[str], positions: Sequence[float],
                        now: float, efforts: Optional[Sequence[float]] = None) -> Verdict:
        """Joint state from the robot. Extra joints are ignored; all gate joints must be there.
        The first one initialises the held position; later ones are used when an e-stop is reset.
        Measured `efforts` (Nm / N, same order as `names`) above a joint's max_effort mean a
        collision or an overload: the e-stop engages."""
        names = list(names) if not isinstance(names, str) else [names]
        try:
            values = np.asarray(positions, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return _reject("non_numeric", "joint state positions must be numbers")
        if len(names) != values.size:
            return _reject("length_mismatch", f"{len(names)} names but {values.size} positions")
        lookup = dict(zip(names, values.tolist()))
        missing = [n for n in self.names if n not in lookup]
        if missing:
            return _reject("missing_joint", f"joint state lacks {missing}")
        measured = [lookup[n] for n in self.names]
        if not all(math.isfinite(q) for q in measured):
            return _reject("non_finite", "joint state holds NaN or inf")
        self._measured, self._measured_at = measured, float(now)
        if self._pos is None:
            self._resync()
        if efforts is not None and len(efforts) == len(names):
            self._check_efforts(dict(zip(names, efforts)))
        return Verdict(True, "accepted")

    def _check_efforts(self, measured: dict) -> None:
        for name, limit in zip(self.names, self._max_effort):
            effort = measured.get(name)
            if effort is not None and math.isfinite(effort) and (
                    abs(effort) > EFFORT_TOLERANCE * limit):
                self.engage_estop(f"effort limit: {name} at {effort:.1f}, limit {limit:.1f}")
                return

    def _resync(self) -> None:
        # Hold where the robot is, even inside the margin: moving it inward unasked would be a
        # motion nobody commanded. Commands are clamped into the band; the output never moves
        # further out of it.
        self._pos = list(self._measured)
        self._step = [0.0] * len(self._pos)
        self._target = list(self._pos)

    def _on_estop(self) -> None:
        if self._pos is not None:
            self._step = [0.0] * len(self._pos)
            self._target = list(self._pos)

    def _on_reset(self) -> None:
        # The robot may have sagged while stopped; continue from where it really is.
        if self._measured is not None:
            self._resync()

    def submit(self, source: str, names: Sequence[str], positions: Sequence[float],
               now: float) -> Verdict:
        """Position targets (rad / m) for some or all joints; unnamed joints keep their target."""
        return self._submit(source, names, positions, now, is_velocity=False)

    def submit_jog(self, source: str, names: Sequence[str], velocities: Sequence[float],
                   now: float) -> Verdict:
        """Joint velocities (rad/s / m/s), followed each tick while fresh (teleop jog)."""
        return self._submit(source, names, velocities, now, is_velocity=True)

    def _submit(self, source: str, names: Sequence[str], values: Sequence[float], now: float,
                is_velocity: bool) -> Verdict:
        verdict = self._precheck(source, now)
        if verdict is not None:
            return verdict
        parsed = self._parse(names, values, is_velocity)
        if isinstance(parsed, Verdict):
            return self._count(parsed)
        index, values = parsed
        if self._pos is None:
            return self._count(_reject("not_ready", "no joint state yet: the gate cannot know "
                                                    "where the robot is"))
        if self._fk is not None and not is_velocity:
            target = np.array(self._target)
            target[index] = np.clip(values, self._band_lo[index], self._band_hi[index])
            try:
                inside = self.limits.workspace.contains(self._fk(target))
            except Exception as exc:  # noqa: BLE001 - any FK failure means "cannot check"
                return self._count(_reject("workspace", f"forward kinematics failed: {exc!r}"))
            if not inside:
                return self._count(_reject("workspace", "target leaves the workspace box"))
        return self._store(source, _Command(values, index, is_velocity, float(now)))

    def _parse(self, names: Sequence[str], values: Sequence[float],
               is_velocity: bool) -> Union[Verdict, tuple[np.ndarray, np.ndarray]]:
        if isinstance(names, str):
            return _reject("bad_names", "names must be a sequence of joint names, not a string")
        names = list(names)
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            return _reject("non_numeric", "values must be numbers")
        if values.ndim != 1 or len(names) != values.size:
            return _reject("length_mismatch",
                           f"{len(names)} names but values of shape {values.shape}")
        if not names:
            return _reject("empty", "command names no joints")
        unknown = [n for n in names if not isinstance(n, str) or n not in self._index]
        if unknown:
            return _reject("unknown_joint",
                           f"unknown joints {unknown!r}; known: {list(self.names)}")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            return _reject("duplicate_joint", f"joints named more than once: {dup}")
        index = np.array([self._index[n] for n in names])
        bad = ~np.isfinite(values)
        if bad.any():
            joints = [names[i] for i in np.flatnonzero(bad)]
            return _reject("non_finite", f"NaN or inf for {joints}")
        if is_velocity:
            bound = IMPLAUSIBLE_VELOCITY_FACTOR * self._max_velocity[index]
            bad = np.abs(values) > bound
        else:
            bad = (values < self._lower[index] - self._span[index]) | (
                values > self._upper[index] + self._span[index])
        if bad.any():
            joints = [f"{names[i]}={values[i]:g}" for i in np.flatnonzero(bad)]
            kind = "velocity" if is_velocity else "position"
            return _reject("implausible", f"implausible {kind} (far outside the limits): {joints}")
        return index, values

    # ---- output ------------------------------------------------------------------------------
    def tick(self, now: float) -> Optional[GateOutput]:
        """The command to send this control period, or None before any joint state arrived.
        Raises ValueError for a non-finite `now` (a caller bug, not robot input)."""
        command = self._supervise(now)
        if self._pos is None:
            return None
        if self.estop_engaged:
            # Category-0 style: hold the last sent position with zero velocity at once (the
            # motion state was dropped in `_on_estop`). The acceleration bound is deliberately
            # not applied to this transition, and only to it: a ramp-down would keep the arm
            # moving for up to ~0.3 s after an e-stop, and holding is what a position-controlled
            # arm (or its brakes) does anyway.
            return self._output(True, f"e-stop: {self._estop_reason}", [])
        clamped: list[str] = []
        jog: dict[int, float] = {}  # joint index -> velocity, for joints following a jog
        if command is None:
            # Watchdog: a jog at zero velocity is exactly a controlled stop.
            jog = dict.fromkeys(range(len(self._joints)), 0.0)
        elif command.is_velocity:
            jog = dict(zip(command.index.tolist(), command.values.tolist()))
        else:
            for i, wanted in zip(command.index.tolist(), command.values.tolist()):
                joint = self._joints[i]
                self._target[i] = min(max(wanted, joint.lo), joint.hi)
                if abs(wanted - self._target[i]) > _EPS:
                    clamped.append(f"position:{joint.name}")
        for i, joint in enumerate(self._joints):
            self._advance(i, joint, jog.get(i), clamped)
        if command is None:
            moving = any(step != 0.0 for step in self._step)
            reason = "watchdog: no fresh command, " + ("stopping" if moving else "holding")
            return self._output(True, reason, clamped)
        return self._output(False, f"following {self._active}", clamped)

    def _advance(self, i: int, joint: _Joint, jog_velocity: Optional[float],
                 clamped: list[str]) -> None:
        """Move joint i one tick toward its target (or at its jog velocity) within the limits."""
        pos, step, lo, hi = self._pos[i], self._step[i], joint.lo, joint.hi
        if jog_velocity is None:
            # Fastest step from which the joint can still brake onto its target.
            error = self._target[i] - pos
            reach = _max_step_to_stop(abs(error), joint.dstep)
            if reach > joint.max_step + _EPS:
                clamped.append(f"velocity:{joint.name}")
            desired = math.copysign(min(reach, joint.max_step), error)
        else:
            # The jog velocity, but never faster than allows braking before the band edge.
            wanted = jog_velocity * self.period_s
            if abs(wanted) > joint.max_step + _EPS:
                clamped.append(f"velocity:{joint.name}")
            wanted = min(max(wanted, -joint.max_step), joint.max_step)
            if wanted > 0.0:
                desired = min(wanted, _max_step_to_stop(hi - pos, joint.dstep))
            elif wanted < 0.0:
                desired = max(wanted, -_max_step_to_stop(pos - lo, joint.dstep))
            else:
                desired = 0.0
            if abs(desired - wanted) > _EPS:
                clamped.append(f"position:{joint.name}")
        # Acceleration: the step changes by at most max_acceleration * period^2 per tick.
        new_step = min(max(desired, step - joint.dstep), step + joint.dstep)
        if abs(new_step - desired) > _EPS:
            clamped.append(f"acceleration:{joint.name}")
        # Braking keeps the joint inside the band; this only removes rounding, and never pulls a
        # joint that started outside the band (in the margin) back in a jump.
        new_pos = min(max(pos + new_step, min(lo, pos)), max(hi, pos))
        self._step[i] = new_pos - pos
        self._pos[i] = new_pos
        if jog_velocity is not None:
            # A jog or stop leaves as target the point where braking would end, so a later
            # position command, or the end of the stop, continues without a jerk.
            stop_at = new_pos + _braking_distance(self._step[i], joint.dstep)
            self._target[i] = min(max(stop_at, min(lo, new_pos)), max(hi, new_pos))

    def _output(self, stopped: bool, reason: str, clamped: list[str]) -> GateOutput:
        return GateOutput(self.names, np.array(self._pos), np.array(self._step) / self.period_s,
                          self._active, stopped, reason, self._note_clamped(clamped))

    def status(self) -> dict:
        status = super().status()
        status.update({
            "initialised": self._pos is not None,
            "measured_at": self._measured_at,
            "workspace_checked": self._fk is not None,
            "limits": {name: {"lower": float(self._band_lo[i]), "upper": float(self._band_hi[i]),
                              "max_velocity": float(self._max_velocity[i]),
                              "max_acceleration": float(self._max_acceleration[i])}
                       for i, name in enumerate(self.names)},
        })
        return status


class BaseSafetyGate(_GateCore):
    """Velocity gate for a mobile base: (vx, vy, wz) in, limited (vx, vy, wz) out."""

    def __init__(self, limits: BaseLimits, period_s: float = 0.01, watchdog_s: float = 0.1,
                 sources: Iterable[SourceSpec] = DEFAULT_SOURCES):
        super().__init__(period_s, watchdog_s, sources)
        self.limits = limits
        self._velocity = (0.0, 0.0, 0.0)  # last sent vx, vy, wz

    def _on_estop(self) -> None:
        # Zero at once, as for the arm: the e-stop is the one place acceleration is not bounded.
        self._velocity = (0.0, 0.0, 0.0)

    def submit(self, source: str, vx: float, vy: float, wz: float, now: float) -> Verdict:
        verdict = self._precheck(source, now)
        if verdict is not None:
            return verdict
        try:
            values = np.array([vx, vy, wz], dtype=np.float64)
        except (TypeError, ValueError):
            return self._count(_reject("non_numeric", "vx, vy, wz must be numbers"))
        if not np.all(np.isfinite(values)):
            return self._count(_reject("non_finite", f"NaN or inf in (vx, vy, wz) = {values}"))
        lim = self.limits
        bound = IMPLAUSIBLE_VELOCITY_FACTOR * np.array(
            [lim.max_linear_velocity, lim.max_linear_velocity, lim.max_angular_velocity])
        if np.any(np.abs(values) > bound):
            return self._count(_reject(
                "implausible", f"implausible velocity (far outside the limits): {values}"))
        return self._store(source, _Command(values, None, True, float(now)))

    def tick(self, now: float) -> BaseOutput:
        command = self._supervise(now)
        if self.estop_engaged:
            return self._output(True, f"e-stop: {self._estop_reason}", [])
        lim, dt = self.limits, self.period_s
        vx, vy, wz = (0.0, 0.0, 0.0) if command is None else map(float, command.values)
        clamped = []
        if not lim.holonomic and vy != 0.0:
            vy = 0.0
            clamped.append("holonomic")
        speed = math.hypot(vx, vy)
        if speed > lim.max_linear_velocity:  # scale, so the direction of travel is kept
            vx, vy = (vx * lim.max_linear_velocity / speed, vy * lim.max_linear_velocity / speed)
            clamped.append("linear_velocity")
        if abs(wz) > lim.max_angular_velocity:
            wz = math.copysign(lim.max_angular_velocity, wz)
            clamped.append("angular_velocity")
        px, py, pw = self._velocity
        dx, dy = vx - px, vy - py
        change = math.hypot(dx, dy)
        if change > lim.max_linear_acceleration * dt + _EPS:
            scale = lim.max_linear_acceleration * dt / change
            vx, vy = px + dx * scale, py + dy * scale
            clamped.append("linear_acceleration")
        if abs(wz - pw) > lim.max_angular_acceleration * dt + _EPS:
            wz = pw + math.copysign(lim.max_angular_acceleration * dt, wz - pw)
            clamped.append("angular_acceleration")
        self._velocity = (vx, vy, wz)
        if command is None:
            moving = any(v != 0.0 for v in self._velocity)
            reason = "watchdog: no fresh command, " + ("stopping" if moving else "holding")
            return self._output(True, reason, clamped)
        return self._output(False, f"following {self._active}", clamped)

    def _output(self, stopped: bool, reason: str, clamped: list[str]) -> BaseOutput:
        return BaseOutput(*self._velocity, self._active, stopped, reason,
                          self._note_clamped(clamped))

    def status(self) -> dict:
        status = super().status()
        status["limits"] = dataclasses.asdict(self.limits)
        return status
