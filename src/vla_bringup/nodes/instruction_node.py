"""Instruction ingestion node: language in, a plan of skills executed one after another.

Serves /vla/execute_instruction (feedback, cancel; a new goal preempts the running one) and
listens on /vla/instruction (fire and forget: it becomes a goal of the same action). Validates
and plans the text (core.instruction), publishes /vla/task_plan (latched) and hands each skill to
the skill controller through /vla/execute_skill.
"""
from __future__ import annotations

import threading
import time

from rclpy.action import ActionClient, ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from std_msgs.msg import Header, String

from vla_bringup.core.instruction import InstructionError, plan, validate
from vla_bringup.nodes.common import (COMMAND_QOS, LATCHED_QOS, declare_parameters,
                                      quiet_on_shutdown, run)
from vla_bringup.nodes.goal_client import GoalClient, wait_for
from vla_msgs.action import ExecuteInstruction, ExecuteSkill
from vla_msgs.msg import TaskPlan

GOAL_ANSWER_S = 15.0  # s to wait for the skill controller to accept or reject a skill goal


def goal_key(goal_handle) -> bytes:
    return bytes(goal_handle.goal_id.uuid)


class InstructionNode(Node):
    def __init__(self) -> None:
        super().__init__("instruction")
        self.params = declare_parameters(self, "instruction")
        group = ReentrantCallbackGroup()
        self.plan_pub = self.create_publisher(TaskPlan, "/vla/task_plan", LATCHED_QOS)
        self.skill_client = GoalClient(self, ExecuteSkill, "/vla/execute_skill")
        self.server = ActionServer(
            self, ExecuteInstruction, "/vla/execute_instruction", self.execute,
            goal_callback=lambda _: GoalResponse.ACCEPT,
            handle_accepted_callback=self.on_accepted,
            cancel_callback=lambda _: CancelResponse.ACCEPT, callback_group=group)
        # The topic interface reuses the action, so both share validation and preemption.
        self.self_client = ActionClient(self, ExecuteInstruction, "/vla/execute_instruction",
                                        callback_group=group)
        self.create_subscription(String, "/vla/instruction", self.on_instruction_topic,
                                 COMMAND_QOS, callback_group=group)
        self.goal_lock = threading.Lock()
        self.active_goal = None
        self.preempted = set()  # ids of goals that a newer goal replaced
        self.get_logger().info("instruction ingestion ready on /vla/execute_instruction")

    def on_instruction_topic(self, msg: String) -> None:
        if not self.self_client.wait_for_server(timeout_sec=1.0):
            self.get_logger().error("own action server unavailable; instruction dropped")
            return
        self.self_client.send_goal_async(ExecuteInstruction.Goal(instruction=msg.data))

    def on_accepted(self, goal_handle) -> None:
        with self.goal_lock:
            if self.active_goal is not None and self.active_goal.is_active:
                self.preempted.add(goal_key(self.active_goal))
                self.get_logger().info("new instruction preempts the running one")
            self.active_goal = goal_handle
        goal_handle.execute()

    @quiet_on_shutdown(ExecuteInstruction.Result)
    def execute(self, goal_handle):
        text = goal_handle.request.instruction
        try:
            validate(text, max_length=self.params["max_instruction_length"])
            task = plan(text)
        except InstructionError as error:
            self.get_logger().warning(f"rejected instruction {text[:80]!r}: {error}")
            return self.finish(goal_handle, False, f"invalid instruction: {error}")
        self.plan_pub.publish(TaskPlan(
            header=Header(stamp=self.get_clock().now().to_msg()), instruction=text,
            family=task.family, target_object=task.target, destination=task.destination,
            skills=[s.skill for s in task.skills],
            skill_instructions=[s.instruction for s in task.skills]))
        self.get_logger().info(
            f"'{text}' -> {task.family}: " + " | ".join(s.instruction for s in task.skills))
        if not self.skill_client.wait_for_server(timeout_sec=self.params["skill_server_wait_s"]):
            return self.finish(goal_handle, False,
                               "skill controller (/vla/execute_skill) is not running")
        count = len(task.skills)
        for index, skill in enumerate(task.skills):
            ok, message = self.run_skill(goal_handle, skill, index, count)
            if not ok:
                return self.finish(goal_handle, False,
                                   f"skill {index + 1}/{count} '{skill.instruction}' {message}")
        return self.finish(goal_handle, True, f"done: {text}")

    def run_skill(self, goal_handle, skill, index: int, count: int) -> tuple[bool, str]:
        last_heard = [time.monotonic()]

        def publish(skill_progress: float) -> None:
            last_heard[0] = time.monotonic()
            goal_handle.publish_feedback(ExecuteInstruction.Feedback(
                current_skill=skill.instruction, skill_index=index, skill_count=count,
                progress=min(1.0, (index + skill_progress) / count)))

        publish(0.0)
        goal = ExecuteSkill.Goal(skill=skill.skill, instruction=skill.instruction,
                                 target_object=skill.target_object,
                                 destination=skill.destination,
                                 timeout_s=float(self.params["skill_timeout_s"]))
        skill_handle = self.skill_client.send_goal(
            goal, feedback_callback=lambda msg: publish(float(msg.feedback.progress)),
            timeout_s=GOAL_ANSWER_S)
        if skill_handle is None:
            return False, f"got no answer from the skill controller within {GOAL_ANSWER_S:.0f} s"
        if not skill_handle.accepted:
            return False, "was refused by the skill controller"
        result_future = self.skill_client.get_result_async(skill_handle)
        deadline_s = self.params["skill_timeout_s"] + 5.0
        waited = 0.0
        while not wait_for(result_future, 0.05):
            waited += 0.05
            # The skill controller sends feedback every 50 ms while a skill runs; a dead one
            # never answers, and DDS may report its server alive for many seconds more.
            silent = time.monotonic() - last_heard[0]
            if silent > self.params["skill_feedback_timeout_s"]:
                self.skill_client.cancel_goal_async(skill_handle)
                return False, (f"failed: the skill controller stopped responding "
                               f"(no feedback for {silent:.1f} s)")
            if goal_handle.is_cancel_requested or goal_key(goal_handle) in self.preempted:
                cancel = self.skill_client.cancel_goal_async(skill_handle)
                wait_for(cancel, 2.0)
                wait_for(result_future, 2.0)
                return False, ("was cancelled" if goal_handle.is_cancel_requested
                               else "was preempted")
            if waited > deadline_s:
                self.skill_client.cancel_goal_async(skill_handle)
                return False, "timed out waiting for the skill controller"
        result = result_future.result().result
        return bool(result.success), result.message

    def finish(self, goal_handle, success: bool, message: str):
        with self.goal_lock:
            preempted = goal_key(goal_handle) in self.preempted
            self.preempted.discard(goal_key(goal_handle))
        if goal_handle.is_cancel_requested and not success:
            goal_handle.canceled()
        elif success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        if preempted:
            message = f"preempted by a newer instruction ({message})"
        self.get_logger().info(f"instruction finished: success={success}: {message}")
        return ExecuteInstruction.Result(success=success, message=message)


def main() -> None:
    run(InstructionNode, threads=4)


if __name__ == "__main__":
    main()
