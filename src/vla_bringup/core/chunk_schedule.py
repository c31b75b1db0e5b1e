"""Turn action chunks into a control-rate command stream.

Chunks arrive late (inference takes time) and at a rate unrelated to the control loop, so they are
sampled by absolute time: row k of a chunk stamped `start_time` is the target for
`start_time + (k + 1) * dt`, the part already in the past is skipped, and a new chunk takes over
from the old one with a linear cross-fade so the command never jumps.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from vla_bringup.policy.base import ActionChunk


@dataclasses.dataclass
class TimedChunk:
    start_time: float  # s, stamp of the observation the chunk was computed from
    dt: float  # s between rows
    positions: np.ndarray  # (H, N); row k is the target for start_time + (k + 1) * dt
    joint_names: Sequence[str]
    skill_id: str
    chunk_id: int
    skill_done: bool = False
    progress: float = 0.0

    def __post_init__(self) -> None:
        self.positions = np.array(self.positions, dtype=np.float64)  # a copy: callers may reuse
        self.joint_names = tuple(self.joint_names)

    @classmethod
    def from_action_chunk(cls, chunk: ActionChunk, start_time: float, skill_id: str,
                          chunk_id: int) -> "TimedChunk":
        return cls(start_time, chunk.dt, chunk.positions, chunk.joint_names, skill_id, chunk_id,
                   chunk.skill_done, chunk.progress)

    @property
    def end_time(self) -> float:
        """When the last row is due."""
        return self.start_time + self.positions.shape[0] * self.dt


def advance_rows(positions: np.ndarray, dt: float, shift_s: float) -> np.ndarray:
    """(H, N) rows for `start + (k + 1) * dt` -> the rows the same chunk gives `shift_s` later:
    row k becomes the chunk at `(k + 1) * dt + shift_s`, linearly interpolated, the last row held
    past the end. The same stretch of the chunk then runs as if it had arrived `shift_s` later (a
    policy's action lead), while its stamp stays the camera frame's; only the glide into its
    first row differs (from the command at acceptance, over one row's time)."""
    positions = np.asarray(positions, dtype=np.float64)
    if not (math.isfinite(shift_s) and shift_s >= 0.0) or not dt > 0.0:
        raise ValueError(f"shift_s must be >= 0 and dt > 0, got {shift_s}, {dt}")
    last = positions.shape[0] - 1
    u = np.minimum(np.arange(positions.shape[0]) + shift_s / dt, last)
    below = np.floor(u).astype(int)
    above = np.minimum(below + 1, last)
    frac = (u - below)[:, None]
    return (1.0 - frac) * positions[below] + frac * positions[above]


def lead_shift(lead_s: float, elapsed_s: float) -> float:
    """s to advance a chunk by (`advance_rows`) so that it runs from `lead_s` after its frame,
    `elapsed_s` having passed already: never negative, never more than the lead, even when the
    frame's stamp is ahead of the clock it is compared with (a simulator faster than real time)."""
    return lead_s - min(max(elapsed_s, 0.0), lead_s)


class _Track:
    """One accepted chunk plus the command that was being output when it arrived (its anchor).

    `accepted_at` is both when the anchor was output and when this track starts to fade in over
    the tracks before it.
    """

    def __init__(self, chunk: TimedChunk, anchor: Optional[np.ndarray], accepted_at: float) -> None:
        self.chunk = chunk
        # Without any known command (no set_anchor) the first row is all we can start from.
        self.anchor = chunk.positions[0] if anchor is None else np.array(anchor, dtype=np.float64)
        self.accepted_at = accepted_at

    def at(self, t: float) -> np.ndarray:
        chunk = self.chunk
        first_time = chunk.start_time + chunk.dt
        if t >= chunk.end_time:
            return chunk.positions[-1]
        if t >= first_time:
            u = (t - first_time) / chunk.dt
            k = min(int(math.floor(u)), chunk.positions.shape[0] - 2)
            frac = u - k
            return (1.0 - frac) * chunk.positions[k] + frac * chunk.positions[k + 1]
        # Before row 0 the chunk says nothing: glide from the command output at acceptance.
        if t <= self.accepted_at:
            return self.anchor
        frac = (t - self.accepted_at) / (first_time - self.accepted_at)
        return (1.0 - frac) * self.anchor + frac * chunk.positions[0]


class ChunkScheduler:
    """Accepts timed chunks for the active skill and samples the command at any time."""

    def __init__(self, joint_names: Sequence[str], blend_time_s: float = 0.1,
                 max_chunk_age_s: float = 1.0) -> None:
        if blend_time_s < 0.0 or max_chunk_age_s <= 0.0:
            raise ValueError("blend_time_s must be >= 0 and max_chunk_age_s > 0")
        self.joint_names = tuple(joint_names)
        self.blend_time_s = float(blend_time_s)
        self.max_chunk_age_s = float(max_chunk_age_s)
        self.active_skill_id: Optional[str] = None
        # End time of the chunk marked skill_done, set once execution has reached it.
        self.last_done_time: Optional[float] = None
        self.rejected: collections.Counter[str] = collections.Counter()  # reason -> count
        self._tracks: list[_Track] = []  # oldest first; later tracks fade in over earlier ones
        self._anchor: Optional[np.ndarray] = None  # measured/held positions when no track runs
        self._last_output: Optional[np.ndarray] = None
        self._last_accept_time: Optional[float] = None

    @property
    def current_chunk(self) -> Optional[TimedChunk]:
        return self._tracks[-1].chunk if self._tracks else None

    def set_skill(self, skill_id: str) -> None:
        """Start a new skill: queued chunks are dropped so none of the old skill's actions leak."""
        if skill_id == self.active_skill_id:
            return
        self.active_skill_id = skill_id
        if self._last_output is not None:
            self._anchor = self._last_output  # hold where we are until the new skill's chunks come
        self._tracks.clear()
        self.last_done_time = None

    def hold(self) -> None:
        """Stop following the chunks: hold the last output until a new chunk arrives.

        For a policy that went quiet: the rest of its last chunk was planned from an
        observation that is getting old, so the arm waits where it is instead of playing it out.
        """
        if self._last_output is not None:
            self._anchor = self._last_output
        self._tracks.clear()

    def set_anchor(self, positions: Sequence[float]) -> None:
        """Measured positions, used as the start of the first chunk when nothing was output yet."""
        anchor = np.asarray(positions, dtype=np.float64).copy()
        if anchor.shape != (len(self.joint_names),):
            raise ValueError(f"anchor must hold {len(self.joint_names)} values, got {anchor.shape}")
        self._anchor = anchor

    def add(self, chunk: TimedChunk, now: float) -> tuple[bool, str]:
        """Accept `chunk` at time `now`, or say why not; the reason is "ok" when accepted."""
        reason = self.check(chunk, now)
        if reason:
            self.rejected[reason] += 1
            return False, reason
        if chunk.joint_names != self.joint_names:
            order = [chunk.joint_names.index(name) for name in self.joint_names]
            chunk = dataclasses.replace(chunk, positions=chunk.positions[:, order],
                                        joint_names=self.joint_names)
        anchor = self._output(now) if self._tracks else self._anchor
        current = self.current_chunk
        if current is None or now >= current.end_time:
            self._tracks.clear()  # nothing is being executed: no trajectory to fade out of
        self._tracks.append(_Track(chunk, anchor, now))
        self._last_accept_time = now
        return True, "ok"

    def check(self, chunk: TimedChunk, now: float) -> str:
        """Why `chunk` would be refused at `now` ("" when it would be accepted)."""
        if self.active_skill_id is None:
            return "no_active_skill"
        if chunk.skill_id != self.active_skill_id:
            return "stale_skill"
        if set(chunk.joint_names) != set(self.joint_names) or len(chunk.joint_names) != len(
                self.joint_names):
            return "joint_mismatch"
        if chunk.positions.ndim != 2 or chunk.positions.shape[0] == 0 or (
                chunk.positions.shape[1] != len(self.joint_names)):
            return "bad_shape"
        if not (math.isfinite(chunk.dt) and chunk.dt > 0.0 and math.isfinite(chunk.start_time)):
            return "bad_timing"
        if not np.all(np.isfinite(chunk.positions)):
            return "non_finite"
        current = self.current_chunk
        if current is not None and (chunk.start_time, chunk.chunk_id) <= (
                current.start_time, current.chunk_id):
            return "out_of_order"
        if now - chunk.start_time > self.max_chunk_age_s:
            return "too_old"
        if chunk.end_time <= now:
            return "expired"
        return ""

    def _output(self, now: float) -> np.ndarray:
        output = self._tracks[0].at(now)
        for track in self._tracks[1:]:
            if self.blend_time_s > 0.0:
                weight = min(max((now - track.accepted_at) / self.blend_time_s, 0.0), 1.0)
            else:
                weight = 1.0 if now >= track.accepted_at else 0.0
            output = (1.0 - weight) * output + weight * track.at(now)
        return output

    def sample(self, now: float) -> Optional[np.ndarray]:
        """The command at `now` (a fresh array), or None when no chunk was ever accepted."""
        if not self._tracks:
            if self._last_accept_time is None or self._anchor is None:
                return None
            return self._anchor.copy()  # a new skill has no chunk yet: hold the last command
        # A track whose fade-in is complete hides every track before it; forget those.
        for index in range(len(self._tracks) - 1, 0, -1):
            if now >= self._tracks[index].accepted_at + self.blend_time_s:
                del self._tracks[:index]
                break
        output = np.array(self._output(now), dtype=np.float64)
        self._last_output = output.copy()
        self.done_reached(now)
        return output

    def starved(self, now: float) -> bool:
        """True when there is no chunk left to follow (the output holds its last value)."""
        current = self.current_chunk
        return current is None or now >= current.end_time

    def time_since_last_chunk(self, now: float) -> float:
        if self._last_accept_time is None:
            return math.inf
        return now - self._last_accept_time

    def done_reached(self, now: float) -> bool:
        """True once a chunk marked skill_done has been executed to its end for the active skill."""
        current = self.current_chunk
        if self.last_done_time is None and current is not None and current.skill_done and (
                now >= current.end_time):
            self.last_done_time = current.end_time
        return self.last_done_time is not None
