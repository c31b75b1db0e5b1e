"""One skill at a time: action chunks in, a control-rate command out, and when to stop.

The skill controller node drives this from its control timer; the action server thread only
reads `status`. A skill succeeds when the policy reports its goal reached (`skill_done`), and
fails on timeout, on silence from the policy, or on cancel; in every case the command holds the
last target (the arm stays where it is) rather than vanishing.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from typing import Optional, Sequence

import numpy as np

from vla_bringup.core.chunk_schedule import ChunkScheduler, TimedChunk
from vla_bringup.core.robot import PANDA_FINGER_OPEN


class SkillState(enum.Enum):
    IDLE = "idle"
    WAITING_FOR_POLICY = "waiting_for_policy"
    EXECUTING = "executing"
    HOLDING = "holding"  # the policy went quiet: the arm waits, the skill is still alive
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        return self in (SkillState.SUCCEEDED, SkillState.FAILED, SkillState.CANCELED)

    @property
    def active(self) -> bool:
        return self in (SkillState.WAITING_FOR_POLICY, SkillState.EXECUTING, SkillState.HOLDING)


@dataclasses.dataclass(frozen=True)
class SkillStatus:
    state: SkillState
    message: str
    progress: float
    chunks_received: int
    chunk_stamp: Optional[float]  # observation stamp of the chunk now being followed


@dataclasses.dataclass(frozen=True)
class SkillTiming:
    timeout_s: float = 30.0  # whole skill
    first_chunk_timeout_s: float = 10.0  # policy warm-up allowance
    # Silence after which the arm holds instead of playing out the last chunk. Above the VLA
    # checkpoint's usual chunk gaps: it infers at most every 0.3 s, so in the live demo on two
    # loaded cores its chunks came 0.29-0.35 s apart (p50), at most 0.52-0.93 s. At 0.3 s the
    # arm held between most chunks and moved stop-and-go; a rare longer gap still holds briefly.
    policy_timeout_s: float = 0.8
    starvation_timeout_s: float = 2.0  # silence after which the skill fails


@dataclasses.dataclass(frozen=True)
class GraspCheck:
    """A pick counts as done only with something between the fingers (measured joints): not
    closed to within `empty_grip_m` of shut, nor still within `open_margin_m` of open.

    A learned policy can report a pick done after its fingers closed on nothing (the cube was
    missed by a centimetre, or slipped). Going on to the place would carry an empty hand to the
    tray and report the task done. Instead the arm holds, the fingers open, and the policy
    starts the pick again from what it now sees (a new policy skill id resets it), up to
    `attempts` times; then the skill fails, saying why.
    """
    empty_grip_m: float = 0.01  # m, mean finger opening: closed further, nothing is held
    reopen_s: float = 0.8  # s the fingers get to open before the policy's chunks count again
    # Regrasps before the skill fails. With 2, the evaluation of d4s0 (then committed) went from
    # 97 to 100 of 100 seen pick & places and 88 to 89 held-out (docs/training_history.md,
    # twenty-second session): 4 of 10 empty picks were recovered.
    attempts: int = 2
    open_m: float = PANDA_FINGER_OPEN  # m per finger, commanded while reopening
    # m: fingers this near open never closed. Small, because a cube gripped across a diagonal
    # keeps them wide: a 5 cm cube turned 20 degrees holds each finger 3.2 cm out of 4.
    open_margin_m: float = 0.002
    finger_indices: tuple[int, int] = (7, 8)  # where the finger joints are in the positions

    def __post_init__(self) -> None:
        if not (0.0 < self.empty_grip_m < self.open_m - self.open_margin_m
                and self.open_margin_m >= 0.0 and self.reopen_s >= 0.0 and self.attempts >= 0):
            raise ValueError("GraspCheck needs 0 < empty_grip_m < open_m - open_margin_m, "
                             "open_margin_m >= 0, reopen_s >= 0 and attempts >= 0")

    def holding(self, measured_positions: Sequence[float]) -> bool:
        """Something keeps the fingers apart: their mean opening (a cube off centre counts) is
        neither closed on nothing nor still open (a hand that never closed holds nothing)."""
        fingers = [float(measured_positions[i]) for i in self.finger_indices]
        opening = sum(fingers) / len(fingers)
        return self.empty_grip_m < opening < self.open_m - self.open_margin_m


def grasp_check_for(skill: str, grasp: Optional[GraspCheck]) -> Optional[GraspCheck]:
    """The check to run for a skill of kind `skill`: only a pick ends holding something."""
    return grasp if skill == "pick" else None


# The skill controller's `release_check` and `evaluate`'s default: a place's "done" counts only
# once the fingers have let go.
RELEASE_CHECK = True


def release_check_for(skill: str, check: Optional[GraspCheck]) -> Optional[GraspCheck]:
    """The check whose `holding` a skill of kind `skill` must end without: a place lets go."""
    return check if skill == "place" else None


def finger_checks(regrasp_attempts: int, release_check: bool = RELEASE_CHECK, **settings
                  ) -> tuple[Optional[GraspCheck], Optional[GraspCheck]]:
    """The skill controller's checks of the fingers from its parameters, one GraspCheck
    (`settings`: its other fields) serving both: the pick's grasp check (None for
    regrasp_attempts < 0) and the place's release check (None when off)."""
    fingers = GraspCheck(attempts=max(0, regrasp_attempts), **settings)
    return (fingers if regrasp_attempts >= 0 else None), (fingers if release_check else None)


# A regrasp's policy skill id is "<skill_id>~regrasp<n>": the policy starts the pick again, and
# can still tell which skill it belongs to (`base_skill_id`).
REGRASP_MARK = "~regrasp"


def is_regrasp(policy_skill_id: str) -> bool:
    return REGRASP_MARK in policy_skill_id


def base_skill_id(policy_skill_id: str) -> str:
    """The skill id that a policy skill id belongs to: itself, or a regrasp's skill."""
    return policy_skill_id.split(REGRASP_MARK, 1)[0]


class SkillExecutor:
    def __init__(self, joint_names: Sequence[str], blend_time_s: float = 0.1,
                 max_chunk_age_s: float = 1.0) -> None:
        self.joint_names = tuple(joint_names)
        self.scheduler = ChunkScheduler(self.joint_names, blend_time_s, max_chunk_age_s)
        self.skill_id: Optional[str] = None
        # The id the policy's chunks must carry: the skill's own, or a regrasp's
        # ("<skill_id>~regrasp1"), so that the policy starts the pick again from scratch.
        self.policy_skill_id: Optional[str] = None
        self._previous_policy_skill_id: Optional[str] = None  # announced while reopening
        self.grasp: Optional[GraspCheck] = None
        self.regrasps = 0
        # A place's "done" counts only once the fingers have let go (`release_check`): a policy
        # that misreads a place as a finished pick says done at once with the cube still in the
        # hand, and the task would be reported done with it there. Such chunks still run, but
        # their done (and progress) is not taken; they are counted.
        self.release_check: Optional[GraspCheck] = None
        self.dones_while_holding = 0
        self.waiting_since = 0.0  # when the executor began to wait for a first chunk
        self.reopen_until = -math.inf  # chunks from frames before this are refused (regrasp)
        self.state = SkillState.IDLE
        self.message = ""
        self.progress = 0.0
        self.chunks_received = 0
        self.timing = SkillTiming()
        self.started_at = 0.0
        self.lost_at = -math.inf  # when the policy was last reported lost
        # After a policy loss the arm is handed to the safety checker's controlled stop: no
        # target is streamed (the last one lies ahead of the arm, which would still travel to
        # it) until a chunk from a live policy, or a new skill, starts again from the arm.
        self.released = False

    def start(self, skill_id: str, now: float, timing: SkillTiming,
              measured_positions: Optional[Sequence[float]] = None,
              grasp: Optional[GraspCheck] = None,
              release_check: Optional[GraspCheck] = None) -> None:
        """`grasp`: for a pick, what a held cube looks like in the joints (None: no check).
        `release_check`: for a place, the same, which its "done" must not find (None: none)."""
        self.scheduler.set_skill(skill_id)
        if measured_positions is not None and (self.released
                                               or self.scheduler.sample(now) is None):
            self.scheduler.set_anchor(measured_positions)
        self.released = False
        self.skill_id, self.timing, self.started_at = skill_id, timing, now
        self.policy_skill_id, self.grasp, self.regrasps = skill_id, grasp, 0
        self.release_check, self.dones_while_holding = release_check, 0
        self.waiting_since, self.reopen_until = now, -math.inf
        self._previous_policy_skill_id = skill_id
        self.state, self.message, self.progress, self.chunks_received = (
            SkillState.WAITING_FOR_POLICY, "waiting for the first action chunk", 0.0, 0)

    def on_chunk(self, chunk: TimedChunk, now: float,
                 measured_positions: Optional[Sequence[float]] = None) -> tuple[bool, str]:
        """`measured_positions`: where the arm is, to resume from after a release."""
        if not self.state.active:
            return False, "no_active_skill"
        if chunk.start_time < self.lost_at:
            return False, "from_lost_policy"
        if self.released and measured_positions is None:
            return False, "released_needs_measured_positions"
        if chunk.skill_id == self.policy_skill_id and chunk.start_time < self.reopen_until:
            return False, "regrasp_reopening"  # seen before the fingers had opened
        if (chunk.skill_done and self.grasp is not None and measured_positions is not None
                and not self.scheduler.check(chunk, now)  # only a chunk that would count
                and not self.grasp.holding(measured_positions)):
            self._regrasp(now, measured_positions)
            return False, "grasp_missed"
        done_while_holding = (chunk.skill_done and self.release_check is not None
                              and measured_positions is not None
                              and self.release_check.holding(measured_positions))
        if done_while_holding:  # its motion runs; its claim to have finished does not count
            chunk = dataclasses.replace(chunk, skill_done=False, progress=0.0)
        if self.released:
            self.scheduler.hold()
            self.scheduler.set_anchor(measured_positions)
        accepted, reason = self.scheduler.add(chunk, now)
        if not accepted:
            return False, reason
        self.released = False
        self.chunks_received += 1
        self.progress = max(self.progress, min(1.0, max(0.0, float(chunk.progress))))
        if chunk.skill_done:
            self._finish(SkillState.SUCCEEDED, "policy reports the goal reached", progress=1.0)
            return True, "ok"
        self.state, self.message = SkillState.EXECUTING, "executing"
        if done_while_holding:
            self.dones_while_holding += 1
            self.message = (f"executing: the place said done with the object still between the "
                            f"fingers ({self.dones_while_holding}); going on until it lets go")
        return True, "ok"

    def _regrasp(self, now: float, measured_positions: Sequence[float]) -> None:
        """The pick said done with empty fingers: open them and let the policy start again."""
        # After a policy loss the arm is released to the safety checker's stop: no regrasp.
        if self.regrasps >= self.grasp.attempts or self.released:
            grasps = self.regrasps + 1
            self._finish(SkillState.FAILED, "the pick said done with nothing between the "
                         f"fingers ({grasps} grasp{'s' if grasps > 1 else ''})")
            return
        self.regrasps += 1
        self.progress = 0.0  # the pick starts again
        self._previous_policy_skill_id = self.policy_skill_id
        self.policy_skill_id = f"{self.skill_id}{REGRASP_MARK}{self.regrasps}"
        self.scheduler.set_skill(self.policy_skill_id)
        held = self.scheduler.sample(now)
        # The arm holds its last command (where it is), the fingers open.
        held = np.array(measured_positions if held is None else held, dtype=np.float64)
        held[list(self.grasp.finger_indices)] = self.grasp.open_m
        self.scheduler.set_anchor(held)
        # The first-chunk wait starts once the fingers are open and the new id is announced.
        self.reopen_until = now + self.grasp.reopen_s
        self.waiting_since = self.reopen_until
        self.state = SkillState.WAITING_FOR_POLICY
        self.message = (f"regrasping ({self.regrasps} of {self.grasp.attempts}): "
                        "the pick reported done with nothing between the fingers")

    def announced_skill_id(self, now: float) -> Optional[str]:
        """The skill id to announce to the policy at `now`. A regrasp's new id only once the
        fingers have had `reopen_s` to open: the policy resets when it sees the id, and a
        policy that remembers its first frames (the VLA's start memory) must see an open
        hand there, not the closed one of the miss. Until then the old id is announced, and
        its chunks are refused as another skill's."""
        if now < self.reopen_until:
            return self._previous_policy_skill_id
        return self.policy_skill_id

    def command(self, now: float) -> Optional[np.ndarray]:
        """The target to stream now (None until a skill ever produced one); updates timeouts."""
        self._check_time(now)
        return None if self.released else self.scheduler.sample(now)

    def policy_lost(self, now: float) -> bool:
        """The policy process is gone or stalled: stop now rather than at the timeout.

        With a skill running, the executor releases the arm (`released`; `command` gives None)
        and returns True: the caller then asks the safety checker for its controlled stop, which
        brakes from where the arm really is. Without one there is nothing to stop (False).

        Chunks computed from observations before `now` are refused from here on: one that the
        dead process sent just before it died can still be in flight, and must not move the arm
        again after the stop. A respawned or recovered policy answers newer observations.
        """
        self.lost_at = max(self.lost_at, now)
        if not self.state.active:
            return False
        self.released = True  # `on_chunk` or `start` re-anchors on the arm when it ends
        if self.state is SkillState.EXECUTING:
            self.state, self.message = SkillState.HOLDING, "holding: policy lost"
        return True

    def cancel(self, reason: str = "cancelled") -> None:
        if self.state.active:
            self._finish(SkillState.CANCELED, reason)

    def status(self) -> SkillStatus:
        chunk = self.scheduler.current_chunk
        return SkillStatus(self.state, self.message, self.progress, self.chunks_received,
                           chunk.start_time if chunk is not None else None)

    def _check_time(self, now: float) -> None:
        if not self.state.active:
            return
        elapsed = now - self.started_at
        if elapsed > self.timing.timeout_s:
            held = self.dones_while_holding
            self._finish(SkillState.FAILED, f"timed out after {self.timing.timeout_s:.1f} s" + (
                f" (the place said done {held} time{'s' if held > 1 else ''} with the object "
                "still between the fingers)" if held else ""))
        elif self.state is SkillState.WAITING_FOR_POLICY:
            if now - self.waiting_since > self.timing.first_chunk_timeout_s:
                self._finish(SkillState.FAILED,
                             f"no action chunk from the policy within "
                             f"{self.timing.first_chunk_timeout_s:.1f} s")
        else:
            silent = self.scheduler.time_since_last_chunk(now)
            if math.isfinite(silent) and silent > self.timing.starvation_timeout_s:
                self._finish(SkillState.FAILED,
                             f"policy silent for {silent:.1f} s (dead or stalled?)")
            elif self.state is SkillState.EXECUTING and silent > self.timing.policy_timeout_s:
                self.scheduler.hold()
                self.state = SkillState.HOLDING
                self.message = f"holding: no action chunk for {silent:.2f} s"

    def _finish(self, state: SkillState, message: str, progress: Optional[float] = None) -> None:
        # Freeze: drop the rest of the chunks so the command holds where the arm is now
        # (a cancelled or failed skill must not keep following its last trajectory).
        self.scheduler.set_skill(f"{self.skill_id}#finished")
        self.state, self.message = state, message
        if progress is not None:
            self.progress = progress
