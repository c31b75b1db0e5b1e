"""Skill controller node: executes one skill at a time with the active policy.

Serves /vla/execute_skill; announces the running skill on /vla/active_skill (latched) so the
policy conditions on it; accepts /vla/action_chunk for that skill and streams the interpolated
target on /vla/command_raw at the control rate, stamped with the observation the chunk came from.
The control loop runs on its own timer (mutually exclusive group); the action server threads only
wait and report.
"""
from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_bringup.core.chunk_schedule import TimedChunk
from vla_bringup.core.skill_executor import (SkillExecutor, SkillState, SkillTiming,
                                             finger_checks, grasp_check_for, release_check_for)
from vla_bringup.nodes.common import (CHUNK_QOS, COMMAND_QOS, LATCHED_QOS, SENSOR_QOS,
                                      declare_parameters, node_stopping, now_sec,
                                      quiet_on_shutdown, run, sec_to_stamp, serve_lifeline,
                                      stamp_to_sec, watch_lifeline)
from vla_bringup.core.robot import PANDA_JOINT_NAMES
from vla_bringup.policy.base import SKILLS
from vla_msgs.action import ExecuteSkill
from vla_msgs.msg import ActionChunk, SkillCommand

# After a skill ends, keep streaming the held target briefly so the hand-over to the next skill
# does not look like a dead controller to the safety watchdog.
HOLD_AFTER_FINISH_S = 0.5


class SkillControllerNode(Node):
    def __init__(self) -> None:
        super().__init__("skill_controller")
        self.params = p = declare_parameters(self, "skill_controller")
        if p["robot"] != "arm":
            raise RuntimeError(
                "skill_controller: robot:=base is not implemented yet; use robot:=arm")
        self.executor_core = SkillExecutor(PANDA_JOINT_NAMES, p["blend_time_s"],
                                           p["max_chunk_age_s"])
        # A pick's "done" counts only with something between the fingers, a place's only once
        # they have let go of the object (core/skill_executor).
        self.grasp_check, self.release_check = finger_checks(
            p["regrasp_attempts"], p["release_check"], empty_grip_m=p["empty_grip_m"],
            reopen_s=p["regrasp_open_s"])
        self.core_lock = threading.Lock()  # the core is shared by timer, chunk and goal callbacks
        self.step_lock = threading.Lock()
        self.measured = None
        self.finished_at = None
        self.skill_ids = itertools.count(1)
        self.goal_lock = threading.Lock()
        self.active_goal = None

        control_group = MutuallyExclusiveCallbackGroup()
        self.command_pub = self.create_publisher(JointTrajectory, "/vla/command_raw", COMMAND_QOS)
        self.skill_pub = self.create_publisher(SkillCommand, "/vla/active_skill", LATCHED_QOS)
        self.create_subscription(
            ActionChunk, "/vla/action_chunk", self.on_chunk, CHUNK_QOS,
            callback_group=control_group,
            event_callbacks=SubscriptionEventCallbacks(liveliness=self.on_policy_liveliness))
        self.create_subscription(JointState, "/joint_states", self.on_joints, SENSOR_QOS,
                                 callback_group=control_group)
        self.create_timer(1.0 / p["control_rate_hz"], self.control_step,
                          callback_group=control_group)
        self.server = ActionServer(
            self, ExecuteSkill, "/vla/execute_skill", self.execute,
            goal_callback=self.on_goal, handle_accepted_callback=self.on_accepted,
            cancel_callback=lambda _: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup())
        # The policy's process exit, seen at once when it runs on this host (core/lifeline.py);
        # the DDS lease above covers stalls and other hosts.
        self.policy_lifeline = watch_lifeline(
            self, "policy", on_lost=lambda: self.on_policy_lost("its process exited"))
        # And the safety checker sees this process exit the same way.
        self.lifeline = serve_lifeline(self)
        self.skill_msg = SkillCommand(active=False)
        self.skill_pub.publish(self.skill_msg)
        # Latched, and repeated once a second: a policy that (re)starts mid-skill picks it up
        # even if a transient-local hand-over is missed.
        self.create_timer(1.0, lambda: self.skill_pub.publish(self.skill_msg))
        self.get_logger().info(f"skill controller ready: {p['control_rate_hz']:.0f} Hz control")

    # --- control loop (one group: never runs concurrently with chunk/joint callbacks) ---------
    def on_joints(self, msg: JointState) -> None:
        positions = dict(zip(msg.name, msg.position))
        if all(name in positions for name in PANDA_JOINT_NAMES):
            self.measured = np.array([positions[n] for n in PANDA_JOINT_NAMES])

    def on_chunk(self, msg: ActionChunk) -> None:
        now = now_sec(self)
        try:
            positions = np.asarray(msg.positions, dtype=np.float64).reshape(
                int(msg.horizon), len(msg.joint_names))
            chunk = TimedChunk(stamp_to_sec(msg.header.stamp), float(msg.dt), positions,
                               list(msg.joint_names), msg.skill_id, int(msg.chunk_id),
                               bool(msg.skill_done), float(msg.progress))
        except ValueError as error:
            self.get_logger().error(f"malformed action chunk dropped: {error}",
                                    throttle_duration_sec=1.0)
            return
        with self.core_lock:
            accepted, reason = self.executor_core.on_chunk(chunk, now, self.measured)
        # A regrasp is reported by the skill's goal (execute), not per chunk.
        if not accepted and reason not in ("stale_skill", "no_active_skill", "grasp_missed",
                                           "regrasp_reopening"):
            self.get_logger().warning(f"action chunk {msg.chunk_id} dropped: {reason}",
                                      throttle_duration_sec=1.0)

    def on_policy_liveliness(self, info) -> None:
        if info.alive_count == 0 and info.alive_count_change < 0:
            self.on_policy_lost("DDS liveliness")

    def on_policy_lost(self, how: str) -> None:
        with self.core_lock:
            stopping = self.executor_core.policy_lost(now_sec(self))
        if stopping:
            # An empty trajectory asks the safety checker for its controlled stop now (as it
            # stops a joint_trajectory_controller): it brakes from where the arm really is,
            # while the last target lies ahead of it. The stream then stays quiet.
            with self.step_lock:
                self.command_pub.publish(JointTrajectory(
                    header=Header(stamp=sec_to_stamp(now_sec(self))),
                    joint_names=list(PANDA_JOINT_NAMES)))
        self.get_logger().error(f"policy lost ({how}): "
                                + ("controlled stop requested" if stopping else "no skill running"))

    def control_step(self) -> None:
        # One step at a time, published in order with the stop request of `on_policy_lost`.
        with self.step_lock:
            self.publish_step()

    def publish_step(self) -> None:
        now = now_sec(self)
        with self.core_lock:
            target = self.executor_core.command(now)
            status = self.executor_core.status()
        if status.state.finished:
            self.finished_at = self.finished_at or now
        else:
            self.finished_at = None
        streaming = status.state.active or (
            self.finished_at is not None and now - self.finished_at < HOLD_AFTER_FINISH_S)
        if target is None or not streaming:
            return
        stamp = status.chunk_stamp if status.chunk_stamp is not None else now
        period = 1.0 / self.params["control_rate_hz"]
        self.command_pub.publish(JointTrajectory(
            header=Header(stamp=sec_to_stamp(stamp)), joint_names=list(PANDA_JOINT_NAMES),
            points=[JointTrajectoryPoint(positions=target.tolist(),
                                         time_from_start=Duration(nanosec=int(period * 1e9)))]))

    def announce(self, msg: SkillCommand) -> None:
        self.skill_msg = msg
        self.skill_pub.publish(msg)

    # --- action server --------------------------------------------------------------------------
    def on_goal(self, goal: ExecuteSkill.Goal) -> GoalResponse:
        if goal.skill not in SKILLS:
            self.get_logger().error(f"unknown skill {goal.skill!r}; known: {SKILLS}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def on_accepted(self, goal_handle) -> None:
        with self.goal_lock:
            previous, self.active_goal = self.active_goal, goal_handle
        if previous is not None and previous.is_active:
            with self.core_lock:
                self.executor_core.cancel("preempted by a new skill")
        goal_handle.execute()

    def wait_for_policy(self, goal_handle) -> str:
        """Wait until a policy node publishes chunks; "" when one does, else why not.

        A learned policy can take tens of seconds to load its model after the graph is up; a
        skill started before that would fail on the first-chunk timeout for no fault of the
        user's. The policy creates its chunk publisher only once its backend is loaded.
        """
        deadline = time.monotonic() + self.params["policy_wait_s"]
        logged = False
        while not node_stopping(self) and self.count_publishers("/vla/action_chunk") == 0:
            if goal_handle.is_cancel_requested or not goal_handle.is_active:
                return "canceled while waiting for the policy node"
            with self.goal_lock:
                if self.active_goal is not goal_handle:
                    return "preempted by a new skill while waiting for the policy node"
            if time.monotonic() >= deadline:
                return (f"no policy node publishes /vla/action_chunk after "
                        f"{self.params['policy_wait_s']:.0f} s (policy_wait_s)")
            if not logged:
                self.get_logger().info("waiting for the policy node (still starting?)")
                logged = True
            goal_handle.publish_feedback(ExecuteSkill.Feedback(state="waiting_for_policy"))
            time.sleep(0.1)
        return "the node shut down" if node_stopping(self) else ""

    @quiet_on_shutdown(ExecuteSkill.Result)
    def execute(self, goal_handle) -> ExecuteSkill.Result:
        goal = goal_handle.request
        p = self.params
        missing = self.wait_for_policy(goal_handle)
        if missing:
            self.get_logger().error(f"skill '{goal.instruction}' not started: {missing}")
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
            else:
                goal_handle.abort()
            return ExecuteSkill.Result(success=False, message=missing)
        skill_id = f"{goal.skill}-{next(self.skill_ids)}-{time.time_ns() % 10**9}"
        timing = SkillTiming(timeout_s=goal.timeout_s if goal.timeout_s > 0 else
                             p["default_skill_timeout_s"],
                             first_chunk_timeout_s=p["first_chunk_timeout_s"],
                             policy_timeout_s=p["policy_timeout_s"],
                             starvation_timeout_s=p["starvation_timeout_s"])
        with self.core_lock:
            self.executor_core.start(skill_id, now_sec(self), timing, self.measured,
                                     grasp_check_for(goal.skill, self.grasp_check),
                                     release_check_for(goal.skill, self.release_check))

        def announce_active(policy_skill_id: str) -> None:
            self.announce(SkillCommand(
                header=Header(stamp=self.get_clock().now().to_msg()), active=True,
                skill_id=policy_skill_id, skill=goal.skill, instruction=goal.instruction,
                target_object=goal.target_object, destination=goal.destination))
        announce_active(skill_id)
        announced = skill_id
        self.get_logger().info(f"skill '{goal.instruction}' started ({skill_id})")
        status = self.executor_core.status()
        while rclpy.ok():
            time.sleep(0.05)
            with self.core_lock:
                preempted = self.executor_core.skill_id != skill_id
                policy_skill_id = self.executor_core.announced_skill_id(now_sec(self))
                # Only this goal's own skill: a cancel that reaches a goal already preempted
                # (a client cancelling its stale try) must not stop the skill that replaced it.
                if goal_handle.is_cancel_requested and not preempted:
                    self.executor_core.cancel()
                status = self.executor_core.status()
                if not preempted and policy_skill_id != announced and status.state.active:
                    # A regrasp: the policy starts the pick again under a new id (it resets).
                    # Announced under the lock, so a newer goal's announcement cannot be
                    # overwritten by this one's.
                    announce_active(policy_skill_id)
                    announced = policy_skill_id
                    self.get_logger().warning(f"skill '{goal.instruction}' {status.message}")
            if preempted:
                goal_handle.abort()
                return ExecuteSkill.Result(success=False, message="preempted by a new skill")
            if status.state.finished or not goal_handle.is_active:
                break
            goal_handle.publish_feedback(ExecuteSkill.Feedback(
                state=status.state.value, progress=status.progress,
                chunks_received=status.chunks_received))
        with self.goal_lock:
            still_current = self.active_goal is goal_handle
        if still_current:
            self.announce(SkillCommand(header=Header(stamp=self.get_clock().now().to_msg()),
                                       active=False))
        success = status.state is SkillState.SUCCEEDED
        if status.state is SkillState.CANCELED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        self.get_logger().info(f"skill {skill_id} {status.state.value}: {status.message}")
        return ExecuteSkill.Result(success=success, message=status.message)


def main() -> None:
    run(SkillControllerNode, threads=4)


if __name__ == "__main__":
    main()
