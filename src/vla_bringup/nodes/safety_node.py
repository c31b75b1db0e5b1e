"""Safety checker node: the only publisher to the robot.

Inputs: /vla/command_raw (autonomy), /teleop/joint_jog (teleop, outranks autonomy),
/vla/cmd_vel_raw + /teleop/cmd_vel (mobile base), /joint_states, /safety/estop (true engages,
latched) and the /safety/reset service. Every control period it publishes what the safety core
allows on /safety/joint_command (arm) or /cmd_vel (base): the winning source's command clamped to
the limits, or a stop. /safety/status (latched) and /diagnostics report what it is doing.
The control loop is a thread of its own, so a flood of inputs cannot delay it; an e-stop or a
teleop takeover does not wait for its next tick. The process runs SCHED_FIFO where it may
(realtime_priority), so busy neighbours cannot keep a stop waiting for a core.
"""
from __future__ import annotations

import os
import threading
import time

import rclpy
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Header
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_bringup.core.realtime import apply_realtime_priority
from vla_bringup.core.safety import ArmSafetyGate, BaseSafetyGate
from vla_bringup.core.safety_limits import ArmLimits, BaseLimits, load_limits_file
from vla_bringup.core.teleop import Deadman
from vla_bringup.nodes.common import (COMMAND_QOS, LATCHED_QOS, SENSOR_QOS, config_dir,
                                      declare_parameters, now_sec, run, sec_to_stamp,
                                      stamp_to_sec, watch_lifeline)
from vla_msgs.msg import JointJog, SafetyStatus


def grasp_point_fk():
    """Forward kinematics of the Panda's grasp point (world frame) for the workspace box."""
    from vla_bringup.sim.kinematics import PandaKinematics
    kinematics = PandaKinematics()
    return lambda positions: kinematics.fk(positions[:7])[0]


class SafetyNode(Node):
    def __init__(self) -> None:
        super().__init__("safety")
        self.params = p = declare_parameters(self, "safety")
        path = p["limits_file"]
        if not os.path.isabs(path):
            path = os.path.join(config_dir(), path)
        limits = load_limits_file(path)
        self.period = 1.0 / p["control_rate_hz"]
        sources = (("teleop", 100, p["teleop_timeout_s"]),
                   ("autonomy", 10, p["watchdog_timeout_s"]))
        self.is_arm = p["robot"] == "arm"
        if self.is_arm:
            self.gate = ArmSafetyGate(ArmLimits.from_dict(limits), self.period,
                                      p["watchdog_timeout_s"], sources,
                                      forward_kinematics=grasp_point_fk()
                                      if p["check_workspace"] else None)
        else:
            self.gate = BaseSafetyGate(BaseLimits.from_dict(limits["base"]), self.period,
                                       p["watchdog_timeout_s"], sources)
        self.deadman = (Deadman(p["teleop_enable_timeout_s"]) if p["teleop_requires_enable"]
                        else None)
        self.heartbeats = [t.strip() for t in p["heartbeat_topics"].split(",") if t.strip()]
        for topic in self.heartbeats:
            self.gate.register_heartbeat(topic, p["heartbeat_timeout_s"])
        self.lock = threading.Lock()  # the gate is shared by inputs and the control loop
        # One tick at a time, published in tick order: a tick from an input callback (e-stop,
        # takeover) and one from the loop must not interleave their publications.
        self.step_lock = threading.Lock()
        self.last_step_at = time.monotonic()
        self.early_tick = threading.Event()  # a callback ticked: restart the loop's period
        self.stamps = {}  # source -> stamp (s) of its latest accepted command
        self.last_rejection = ""

        if self.is_arm:
            self.command_pub = self.create_publisher(JointTrajectory, "/safety/joint_command",
                                                     COMMAND_QOS)
            self.create_subscription(JointTrajectory, "/vla/command_raw", self.on_autonomy,
                                     COMMAND_QOS)
            self.create_subscription(JointJog, "/teleop/joint_jog", self.on_jog, COMMAND_QOS)
            self.create_subscription(JointState, "/joint_states", self.on_joints, SENSOR_QOS)
        else:
            self.command_pub = self.create_publisher(Twist, "/cmd_vel", COMMAND_QOS)
            self.create_subscription(Twist, "/vla/cmd_vel_raw",
                                     lambda m: self.on_twist("autonomy", m), COMMAND_QOS)
            self.create_subscription(Twist, "/teleop/cmd_vel",
                                     lambda m: self.on_twist("teleop", m), COMMAND_QOS)
        self.create_subscription(Bool, "/safety/estop", self.on_estop, COMMAND_QOS)
        self.create_subscription(Bool, "/teleop/enable", self.on_enable, COMMAND_QOS)
        for topic in self.heartbeats:
            self.create_subscription(Bool, topic, lambda m, t=topic: self.on_heartbeat(t, m),
                                     COMMAND_QOS)
        self.create_service(Trigger, "/safety/reset", self.on_reset)
        self.status_pub = self.create_publisher(SafetyStatus, "/safety/status", LATCHED_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        # The control loop runs on a thread of its own, paced by the monotonic clock: executor
        # timers share the executor's dispatch with every subscription and jitter by tens of
        # milliseconds under load, which a safety loop cannot afford.
        # Before the loop and the executor threads exist, so that they inherit the policy.
        applied, how = apply_realtime_priority(p["realtime_priority"])
        (self.get_logger().info if applied or not p["realtime_priority"]
         else self.get_logger().warning)(f"scheduling: {how}")
        self.running = True
        self.loop = threading.Thread(target=self.control_loop, name="safety-control", daemon=True)
        self.loop.start()
        # The skill controller's process exit, seen at once on this host (core/lifeline.py):
        # the controlled stop starts now instead of after the watchdog time.
        self.autonomy_lifeline = watch_lifeline(self, "skill_controller", self.on_autonomy_lost)
        self.create_timer(1.0 / p["status_rate_hz"], self.publish_status)
        self.last_reported = None
        self.get_logger().info(
            f"safety checker gating the {p['robot']} at {p['control_rate_hz']:.0f} Hz, "
            f"watchdog {p['watchdog_timeout_s'] * 1000:.0f} ms, limits {path}")

    # --- inputs -------------------------------------------------------------------------------
    def note(self, source: str, verdict, stamp: float) -> None:
        if verdict.accepted:
            self.stamps[source] = stamp
        else:
            self.last_rejection = f"{source}: {verdict.reason}"
            self.get_logger().warning(f"rejected {source} command: {verdict.reason}",
                                      throttle_duration_sec=1.0)

    def on_autonomy(self, msg: JointTrajectory) -> None:
        if not msg.points:
            # An empty trajectory is a stop request, as for a joint_trajectory_controller: the
            # skill controller lost its policy.
            self.stop_autonomy("autonomy asked to stop (empty trajectory)")
            return
        if len(msg.points) != 1:
            with self.lock:
                self.last_rejection = f"autonomy: expected one point, got {len(msg.points)}"
            return
        with self.lock:
            verdict = self.gate.submit("autonomy", list(msg.joint_names),
                                       list(msg.points[0].positions), now_sec(self))
            self.note("autonomy", verdict, stamp_to_sec(msg.header.stamp))

    def on_autonomy_lost(self) -> None:
        self.stop_autonomy("skill controller process exited")

    def stop_autonomy(self, why: str) -> None:
        """Controlled stop from the arm's real state now, not after the watchdog time."""
        self.get_logger().error(f"{why}: controlled stop now")
        with self.lock:
            self.gate.source_lost("autonomy")
        self.tick_now()

    def teleop_allowed(self) -> bool:
        if self.deadman is None or self.deadman.allows(now_sec(self)):
            return True
        with self.lock:
            self.last_rejection = "teleop: no /teleop/enable (deadman released)"
        self.get_logger().warning("teleop command without /teleop/enable: ignored",
                                  throttle_duration_sec=1.0)
        return False

    def on_enable(self, msg: Bool) -> None:
        if self.deadman is not None:
            self.deadman.update(bool(msg.data), now_sec(self))

    def on_heartbeat(self, topic: str, msg: Bool) -> None:
        if msg.data:  # an explicit false is a source saying "stop": let it go silent
            with self.lock:
                self.gate.heartbeat(topic, now_sec(self))

    def on_jog(self, msg: JointJog) -> None:
        if not self.teleop_allowed():
            return
        with self.lock:
            verdict = self.gate.submit_jog("teleop", list(msg.joint_names), list(msg.velocities),
                                           now_sec(self))
            self.note("teleop", verdict, now_sec(self))
        self.tick_now_if_taking_over("teleop", verdict)

    def on_twist(self, source: str, msg: Twist) -> None:
        if source == "teleop" and not self.teleop_allowed():
            return
        with self.lock:
            verdict = self.gate.submit(source, msg.linear.x, msg.linear.y, msg.angular.z,
                                       now_sec(self))
            self.note(source, verdict, now_sec(self))
        if source == "teleop":
            self.tick_now_if_taking_over(source, verdict)

    def tick_now_if_taking_over(self, source: str, verdict) -> None:
        """The operator's first command acts now, not up to a period later at the next tick.

        The gate's limits are per tick, and a tick now followed by the next one a full period
        later keeps ticks at least that far apart afterwards; each command still says to be
        reached in one period (time_from_start), so the early tick does not speed the arm up.
        """
        if verdict.accepted and (self.last_reported or (None,))[0] != source:
            self.tick_now()

    def on_joints(self, msg: JointState) -> None:
        with self.lock:
            self.gate.update_measured(list(msg.name), list(msg.position), now_sec(self),
                                      efforts=list(msg.effort) or None)

    def on_estop(self, msg: Bool) -> None:
        with self.lock:
            self.gate.set_estop_input(bool(msg.data))
        if msg.data:
            self.get_logger().error("E-STOP engaged by /safety/estop")
            self.tick_now()  # the stop goes out now, not at the next tick
        self.publish_status()

    def on_reset(self, _request, response: Trigger.Response) -> Trigger.Response:
        with self.lock:
            response.success, response.message = self.gate.reset(now_sec(self))
        self.get_logger().info(f"/safety/reset: {response.message}")
        self.publish_status()
        return response

    # --- output -------------------------------------------------------------------------------
    def control_loop(self) -> None:
        next_tick = time.monotonic()
        while self.running and rclpy.ok():
            try:
                self.control_step()
            except Exception as error:  # publishers vanish at shutdown
                if self.running and rclpy.ok():
                    raise
                self.get_logger().debug(f"control loop ended: {error!r}")
                return
            next_tick += self.period  # a fixed schedule: sleep overshoot does not add up
            while self.running:
                if self.early_tick.is_set():
                    # An e-stop or a takeover ticked from its callback: the schedule restarts
                    # one period after that tick.
                    self.early_tick.clear()
                    next_tick = self.last_step_at + self.period
                delay = next_tick - time.monotonic()
                if delay <= 0:
                    if -delay > self.period:
                        next_tick = time.monotonic()  # overran: no burst of catch-up ticks
                    break
                self.early_tick.wait(delay)

    def close(self) -> None:
        self.running = False
        self.early_tick.set()
        self.loop.join(timeout=1.0)

    def tick_now(self) -> None:
        """A tick from an input callback; the control loop restarts its period from it."""
        self.control_step()
        self.early_tick.set()

    def control_step(self) -> None:
        with self.step_lock:
            self.last_step_at = time.monotonic()
            self.publish_tick(now_sec(self))

    def publish_tick(self, now: float) -> None:
        with self.lock:
            output = self.gate.tick(now)
        if output is None:
            return  # no joint state yet: never invent a position to send
        # A followed command keeps the stamp of the observation it came from (latency is
        # measured from it); a stop is the gate's own decision, stamped now.
        stamp = now if output.stopped else self.stamps.get(output.active_source, now)
        if self.is_arm:
            self.command_pub.publish(JointTrajectory(
                header=Header(stamp=sec_to_stamp(stamp)), joint_names=list(output.names),
                points=[JointTrajectoryPoint(
                    positions=output.positions.tolist(), velocities=output.velocities.tolist(),
                    time_from_start=Duration(nanosec=int(self.period * 1e9)))]))
        else:
            twist = Twist()
            twist.linear.x, twist.linear.y, twist.angular.z = output.vx, output.vy, output.wz
            self.command_pub.publish(twist)
        report = (output.active_source, output.stopped, self.gate.estop_engaged)
        if report != self.last_reported:
            self.last_reported = report
            self.publish_status()

    def publish_status(self) -> None:
        with self.lock:
            status = self.gate.status()
            last_rejection = self.last_rejection
        header = Header(stamp=self.get_clock().now().to_msg())
        msg = SafetyStatus(
            header=header, estop_engaged=status["estop_engaged"],
            estop_reason=status["estop_reason"] or "",
            active_source=status["active_source"] or "none",
            watchdog_tripped=status["watchdog_tripped"],
            engaged_limits=list(status["last_clamped"]),
            commands_received=sum(status["received"].values()),
            commands_clamped=sum(status["clamped"].values()),
            commands_rejected=sum(status["rejected"].values()), last_rejection=last_rejection)
        self.status_pub.publish(msg)
        level = (DiagnosticStatus.ERROR if msg.estop_engaged else
                 DiagnosticStatus.WARN if msg.watchdog_tripped else DiagnosticStatus.OK)
        values = {"active_source": msg.active_source, "estop_reason": msg.estop_reason,
                  "received": str(msg.commands_received), "clamped": str(msg.commands_clamped),
                  "rejected": str(msg.commands_rejected), "last_rejection": last_rejection}
        self.diag_pub.publish(DiagnosticArray(header=header, status=[DiagnosticStatus(
            level=level, name="vla/safety", hardware_id=self.params["robot"],
            message=("e-stop: " + msg.estop_reason) if msg.estop_engaged else
            "holding (no fresh command)" if msg.watchdog_tripped else
            f"following {msg.active_source}",
            values=[KeyValue(key=k, value=v) for k, v in values.items()])]))


def main() -> None:
    # One executor thread: every input callback is short, and a real-time process must not
    # spin (see common.run). The control loop is a thread of its own either way.
    run(SafetyNode, threads=1)


if __name__ == "__main__":
    main()
