"""Test-side and tool-side nodes that watch the graph from outside (demo, bench).

They live in the node layer so the command-line tools stay free of rclpy; `start_in_background`
spins one on its own thread the way an operator's tool would.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
from typing import Callable

import numpy as np
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from vla_bringup.nodes.common import (CHUNK_QOS, COMMAND_QOS, LATCHED_QOS, SENSOR_QOS,
                                      image_msg_to_rgb, make_executor, stamp_to_sec)
from vla_bringup.nodes.goal_client import GoalClient
from vla_msgs.action import ExecuteInstruction
from vla_msgs.msg import ActionChunk, JointJog, SafetyStatus, SceneState

# How long `stop` waits for the spinning thread to finish destroying the node's entities.
SPIN_JOIN_S = 10.0


def start_in_background(make_node: Callable[[], Node], threads: int = 2):
    """Start rclpy and spin a new node on a background thread; returns (node, stop).

    threads=1 runs callbacks on the spinning thread itself (no dispatcher that polls), as a
    real-time process needs (see nodes.common.run)."""
    rclpy.init()
    node = make_node()
    executor = make_executor(threads)
    executor.add_node(node)

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass  # `stop` shuts the context down first: the normal end of this thread
        except Exception:
            # The same end, when the shutdown lands while the executor builds its wait set:
            # rclpy then raises RCLError ("context is not valid") instead (seen once in a demo).
            if rclpy.ok():
                raise

    spinner = threading.Thread(target=spin, name="observer spin", daemon=True)
    spinner.start()

    def stop() -> None:
        context = node.context  # rclpy forgets its default context once it is shut down
        # Context first: the executor then ends without tasks left half-run on destroyed
        # entities (which rclpy would report as never-retrieved exceptions at exit).
        rclpy.try_shutdown()
        executor.shutdown()
        # destroy_node leaves waitables alone, and an action client's clients and
        # subscriptions would keep the node, and its DDS endpoints, alive.
        for waitable in list(node.waitables):
            if isinstance(waitable, ActionClient):
                waitable.destroy()
        node.destroy_node()
        # Entities that the spinning wait set still held are destroyed when it lets go, on the
        # spinning thread. Wait for that, then destroy the context (the DDS participant), so
        # that this process has no endpoints left when the caller stops the graph. A demo once
        # hung for good when they were destroyed while the graph's nodes were exiting: Fast
        # DDS 3.2 deadlocked in this process (its receive thread removing a departed node's
        # writer, its event thread announcing the participant; like eProsima/Fast-DDS#6502
        # and #6193, open), and the spinning thread, blocked in that destruction, held the GIL.
        # Were that to happen here, the join below could not time out either (it needs the
        # GIL): the bound is then the caller's.
        spinner.join(timeout=SPIN_JOIN_S)
        if spinner.is_alive():
            print(f"[observer] spin thread still running {SPIN_JOIN_S} s after the stop",
                  file=sys.stderr, flush=True)
        else:
            context.destroy()
        # Futures of the destroyed action client report at garbage collection; collect now so
        # any such line comes before the tool's own final output, not after it.
        gc.collect()
    return node, stop


class DemoObserver(Node):
    """Watches the graph from outside, the way a user's tool would."""

    def __init__(self) -> None:
        super().__init__("demo_observer")
        self.lock = threading.Lock()
        self.image = None
        self.scene = None
        self.sim_clock = None
        self.chunk_stamps = set()
        # (wall receive time, camera stamp, the policy's inference_ms) per chunk
        self.chunk_arrivals = []
        self.command_times = []  # wall receive times of /safety/joint_command
        self.latencies = {}  # chunk stamp -> first-arrival latency (s) on /safety/joint_command
        self.client = GoalClient(self, ExecuteInstruction, "/vla/execute_instruction")
        self.create_subscription(Image, "/camera/image_raw", self.on_image, SENSOR_QOS)
        self.create_subscription(SceneState, "/sim/scene_state", self.on_scene, COMMAND_QOS)
        self.create_subscription(Clock, "/clock", self.on_clock, 10)
        self.create_subscription(ActionChunk, "/vla/action_chunk", self.on_chunk, CHUNK_QOS)
        self.create_subscription(JointTrajectory, "/safety/joint_command", self.on_command,
                                 COMMAND_QOS)

    def on_image(self, msg: Image) -> None:
        with self.lock:
            self.image = msg  # decoded only when a picture is taken

    def picture(self):
        """The latest camera frame as HxWx3 uint8 RGB."""
        with self.lock:
            msg = self.image
        return image_msg_to_rgb(msg)

    def on_scene(self, msg: SceneState) -> None:
        with self.lock:
            self.scene = msg

    def on_clock(self, msg: Clock) -> None:
        self.sim_clock = stamp_to_sec(msg.clock)

    def on_chunk(self, msg: ActionChunk) -> None:
        now = time.time()
        with self.lock:
            stamp = stamp_to_sec(msg.header.stamp)
            self.chunk_stamps.add(stamp)
            self.chunk_arrivals.append((now, stamp, float(msg.inference_ms)))

    def on_command(self, msg: JointTrajectory) -> None:
        now = time.time()
        stamp = stamp_to_sec(msg.header.stamp)
        with self.lock:
            self.command_times.append(now)
            # A command derived from a chunk carries that chunk's camera stamp; the first time a
            # stamp reaches the robot is the camera-to-command latency of that frame.
            if stamp in self.chunk_stamps and stamp not in self.latencies:
                self.latencies[stamp] = now - stamp


class BenchObserver(Node):
    def __init__(self) -> None:
        super().__init__("bench_observer")
        self.lock = threading.Lock()
        self.commands = []  # (wall time, max |velocity|)
        self.statuses = []  # (wall time, active_source, estop_engaged)
        self.last_chunk = 0.0
        self.autonomy = []  # (wall time, positions) of the skill controller's stream
        self.create_subscription(JointTrajectory, "/safety/joint_command", self.on_command,
                                 COMMAND_QOS)
        self.create_subscription(JointTrajectory, "/vla/command_raw", self.on_autonomy,
                                 COMMAND_QOS)
        self.create_subscription(SafetyStatus, "/safety/status", self.on_status, LATCHED_QOS)
        self.create_subscription(ActionChunk, "/vla/action_chunk", self.on_chunk, CHUNK_QOS)
        self.estop = self.create_publisher(Bool, "/safety/estop", COMMAND_QOS)
        self.enable = self.create_publisher(Bool, "/teleop/enable", COMMAND_QOS)
        self.jog_pub = self.create_publisher(JointJog, "/teleop/joint_jog", COMMAND_QOS)
        self.reset = self.create_client(Trigger, "/safety/reset")
        self.tasks = GoalClient(self, ExecuteInstruction, "/vla/execute_instruction")

    def on_command(self, msg: JointTrajectory) -> None:
        speed = float(np.max(np.abs(msg.points[0].velocities))) if msg.points[0].velocities else 0.0
        with self.lock:
            self.commands.append((time.time(), speed))

    def on_autonomy(self, msg: JointTrajectory) -> None:
        positions = tuple(msg.points[0].positions) if msg.points else ()
        with self.lock:
            self.autonomy.append((time.time(), positions))

    def stop_requested(self, since: float, until: float):
        """When the skill controller asked for the controlled stop (an empty trajectory) in
        [since, until]; None if it did not."""
        with self.lock:
            return next((t for t, p in self.autonomy if since <= t <= until and p == ()), None)

    def on_status(self, msg: SafetyStatus) -> None:
        with self.lock:
            self.statuses.append((time.time(), msg.active_source, msg.estop_engaged))

    def on_chunk(self, _msg: ActionChunk) -> None:
        self.last_chunk = time.time()

    def jog(self, velocity: float) -> None:
        self.enable.publish(Bool(data=True))
        self.jog_pub.publish(JointJog(joint_names=["panda_joint1"], velocities=[velocity]))

    def first_command(self, since: float, predicate):
        with self.lock:
            return next((t for t, v in self.commands if t >= since and predicate(v)), None)

    def first_rest(self, since: float, until: float, hold_s: float = 0.3):
        """The first zero-velocity command after `since` that stays zero for `hold_s`: the arm
        stopped (and what may move it later is another matter); None if it never did."""
        with self.lock:
            window = [(t, v) for t, v in self.commands if since <= t <= until]
        start = None
        for t, v in window:
            if v > 0.0:
                start = None
            else:
                start = start if start is not None else t
                if t - start >= hold_s:
                    return start
        return None

    def sources_after(self, since: float) -> str:
        """Who was in charge after `since`, and what the skill controller sent: for notes."""
        with self.lock:
            sources = [(round(t - since, 3), s) for t, s, _ in self.statuses if t >= since]
            autonomy = [(round(t - since, 3), len(p)) for t, p in self.autonomy if t >= since]
        changes = [x for i, x in enumerate(sources) if i == 0 or x[1] != sources[i - 1][1]]
        return f"active source changes {changes[:6]}, autonomy messages {autonomy[:6]}"

    def moved_after(self, since: float, until: float) -> list[tuple[float, float]]:
        """(seconds after `since`, speed) of each moving command in the window."""
        with self.lock:
            return [(round(t - since, 3), round(v, 3)) for t, v in self.commands
                    if since <= t <= until and v > 0.0]

    def moving_now(self, speed: float = 0.05) -> bool:
        with self.lock:
            return bool(self.commands) and self.commands[-1][1] > speed

    def last_speeds(self, count: int) -> list[float]:
        with self.lock:
            return [round(v, 4) for _, v in self.commands[-count:]]

    def moving_since(self, since: float) -> bool:
        return self.first_command(since, lambda v: v > 0.01) is not None
