"""Keyboard teleop in a terminal: jog the arm, e-stop and reset through the safety checker.

Publishes /teleop/joint_jog and /teleop/enable (the deadman: true only while a jog key is held,
so letting go stops the arm), /safety/estop on space, and calls /safety/reset on x. Shows the
safety checker's status line. Reads raw keys from the terminal it runs in.
"""
from __future__ import annotations

import os
import select
import sys
import termios
import threading
import time
import tty

import rclpy
from rclpy.node import Node
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from vla_bringup.core import teleop
from vla_bringup.nodes.common import COMMAND_QOS, LATCHED_QOS, run
from vla_msgs.msg import JointJog, SafetyStatus

# A held key repeats every ~30-50 ms after a first delay of up to ~500 ms; a jog stays alive
# this long after the latest repeat so the arm does not stutter through the first delay.
KEY_HOLD_S = 0.6
PUBLISH_PERIOD_S = 0.05


class KeyboardTeleop(Node):
    def __init__(self) -> None:
        super().__init__("teleop_keyboard")
        self.speed = 0.3  # rad/s
        self.jog = None
        self.jog_until = 0.0
        self.status = "waiting for /safety/status"
        self.jog_pub = self.create_publisher(JointJog, "/teleop/joint_jog", COMMAND_QOS)
        self.enable_pub = self.create_publisher(Bool, "/teleop/enable", COMMAND_QOS)
        self.estop_pub = self.create_publisher(Bool, "/safety/estop", COMMAND_QOS)
        self.reset_client = self.create_client(Trigger, "/safety/reset")
        self.create_subscription(SafetyStatus, "/safety/status", self.on_status, LATCHED_QOS)
        self.create_timer(PUBLISH_PERIOD_S, self.publish_jog)

    def on_status(self, msg: SafetyStatus) -> None:
        state = f"E-STOP ({msg.estop_reason})" if msg.estop_engaged else (
            f"source: {msg.active_source}")
        self.status = f"{state}; rejected {msg.commands_rejected}: {msg.last_rejection}"

    def on_key(self, key: str) -> bool:
        """Handle one key; False means quit."""
        if key in teleop.QUIT_KEYS:
            return False
        if key == teleop.ESTOP_KEY:
            self.estop_pub.publish(Bool(data=True))
        elif key == teleop.RESET_KEY:
            self.estop_pub.publish(Bool(data=False))
            if self.reset_client.service_is_ready():
                self.reset_client.call_async(Trigger.Request())
        elif key in (teleop.SPEED_UP, teleop.SPEED_DOWN):
            factor = 1.25 if key == teleop.SPEED_UP else 0.8
            self.speed = min(1.0, max(0.05, self.speed * factor))
        else:
            jog = teleop.jog_for_key(key, self.speed)
            if jog is not None:
                self.jog, self.jog_until = jog, time.monotonic() + KEY_HOLD_S
        return True

    def publish_jog(self) -> None:
        active = self.jog is not None and time.monotonic() < self.jog_until
        self.enable_pub.publish(Bool(data=active))
        if active:
            self.jog_pub.publish(JointJog(joint_names=list(self.jog.joint_names),
                                          velocities=list(self.jog.velocities)))
        sys.stdout.write(f"\r\x1b[K speed {self.speed:.2f} rad/s | "
                         f"{'jogging ' + self.jog.joint_names[0] if active else 'idle'} | "
                         f"{self.status}")
        sys.stdout.flush()


def read_keys(node: KeyboardTeleop, stop: threading.Event) -> None:
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        while not stop.is_set() and rclpy.ok():
            if select.select([fd], [], [], 0.1)[0]:
                key = os.read(fd, 1).decode(errors="ignore")
                if not node.on_key(key):
                    break
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        stop.set()
        rclpy.try_shutdown()


def main() -> None:
    if not sys.stdin.isatty():
        print("teleop_keyboard needs a terminal (run it in its own shell)", file=sys.stderr)
        sys.exit(2)
    print(teleop.HELP)
    stop = threading.Event()

    def make_node() -> KeyboardTeleop:
        node = KeyboardTeleop()
        threading.Thread(target=read_keys, args=(node, stop), daemon=True).start()
        return node

    run(make_node, threads=2)
    stop.set()
    print()


if __name__ == "__main__":
    main()
