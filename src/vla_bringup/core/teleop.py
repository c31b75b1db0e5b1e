"""Teleop pieces without ROS: the deadman rule and the keyboard's key map.

Deadman: teleop commands count only while an enable signal is true and fresh, so a dropped
joystick, a crashed teleop program or a lost network cannot leave a jog running (the
`enable_button` of teleop_twist_joy). The safety node asks `allows(now)` for every teleop command.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from vla_bringup.core.robot import PANDA_JOINT_NAMES


class Deadman:
    def __init__(self, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"deadman timeout must be > 0 s, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self._enabled_at: Optional[float] = None

    def update(self, enabled: bool, now: float) -> None:
        self._enabled_at = now if enabled else None

    def allows(self, now: float) -> bool:
        return self._enabled_at is not None and 0.0 <= now - self._enabled_at <= self.timeout_s


# Keyboard jog: one key pair per joint (+ / -), the gripper last. Lower-case keys only.
JOG_KEYS = {
    "q": (0, +1), "a": (0, -1), "w": (1, +1), "s": (1, -1), "e": (2, +1), "d": (2, -1),
    "r": (3, +1), "f": (3, -1), "t": (4, +1), "g": (4, -1), "y": (5, +1), "h": (5, -1),
    "u": (6, +1), "j": (6, -1), "o": (7, +1), "l": (7, -1),
}
ESTOP_KEY = " "
RESET_KEY = "x"
QUIT_KEYS = ("\x03", "\x1b")  # Ctrl-C, Esc
SPEED_UP, SPEED_DOWN = "+", "-"
GRIPPER_SPEED = 0.05  # m/s per finger


@dataclasses.dataclass(frozen=True)
class Jog:
    joint_names: tuple[str, ...]
    velocities: tuple[float, ...]  # rad/s (m/s for the fingers)


def jog_for_key(key: str, speed: float) -> Optional[Jog]:
    """The jog a key asks for at `speed` rad/s, or None if the key is not a jog key."""
    entry = JOG_KEYS.get(key.lower())
    if entry is None:
        return None
    joint, sign = entry
    if joint == 7:  # both fingers move together
        fingers = PANDA_JOINT_NAMES[7:]
        return Jog(fingers, (sign * GRIPPER_SPEED,) * len(fingers))
    return Jog((PANDA_JOINT_NAMES[joint],), (sign * speed,))


HELP = """keyboard teleop (the safety checker gives teleop priority over autonomy)
  joint 1..7 +/-: q/a w/s e/d r/f t/g y/h u/j    gripper open/close: o/l
  speed: + / -    E-STOP: space    release e-stop and reset: x    quit: Esc or Ctrl-C
Hold a key to jog (the key repeat is the deadman: let go and the arm stops)."""
