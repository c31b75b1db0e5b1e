"""The skill controller's regrasp, on real rclpy: a pick that says done with the fingers closed
on nothing is started again under a new skill id, with the fingers opened, and succeeds once a
chunk says done with something between them.

The controller runs alone; this test is its policy node (it publishes /vla/action_chunk for
the announced skill) and its robot (it publishes /joint_states with the fingers as it chooses).
"""
from __future__ import annotations

import time

import numpy as np

from vla_bringup.core.robot import PANDA_JOINT_NAMES
from vla_bringup.nodes.common import (CHUNK_QOS, COMMAND_QOS, LATCHED_QOS, SENSOR_QOS,
                                      sec_to_stamp)
from vla_msgs.action import ExecuteSkill
from vla_msgs.msg import ActionChunk, SkillCommand
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

ARM = [0.0, -0.5, 0.0, -2.2, 0.0, 1.9, 0.8]
HORIZON, DT = 8, 0.1


def test_a_pick_done_with_empty_fingers_is_regrasped_then_succeeds(probe):
    controller, client = probe.lone_skill_controller(regrasp_attempts=1, regrasp_open_s=0.5)
    announced, commands = [], []
    fingers = [0.0005]  # closed on nothing
    with probe.spin_lock:
        policy = probe.node.create_publisher(ActionChunk, "/vla/action_chunk", CHUNK_QOS)
        joints = probe.node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        # The robot: joint states at 50 Hz, fingers as the test sets them.
        robot = probe.node.create_timer(0.02, lambda: joints.publish(JointState(
            name=list(PANDA_JOINT_NAMES), position=ARM + fingers * 2)))
        subscriptions = [
            probe.node.create_subscription(SkillCommand, "/vla/active_skill", announced.append,
                                           LATCHED_QOS),
            probe.node.create_subscription(JointTrajectory, "/vla/command_raw", commands.append,
                                           COMMAND_QOS)]

    chunk_ids = iter(range(1, 1000))

    def publish_chunk(skill_id: str, done: bool) -> None:
        time.sleep(0.1)  # the controller has the joints of the moment
        rows = np.tile(ARM + [0.0, 0.0], (HORIZON, 1))
        policy.publish(ActionChunk(
            header=_header(), policy_name="test", chunk_id=next(chunk_ids), skill_id=skill_id,
            joint_names=list(PANDA_JOINT_NAMES), horizon=HORIZON, dt=DT,
            positions=rows.ravel().tolist(), skill_done=done, progress=0.9))

    try:
        # On a loaded machine the client may have sent the goal twice (nodes/goal_client.py
        # resends every 2 s) and the controller then starts the skill again under a newer id
        # (CI of 4469dd9 answered the older one). Only the kept try's feedback reaches us after
        # send_goal returns, and the controller sends it after announcing that try's skill.
        kept_feedback = []
        handle = probe.send_goal(client, ExecuteSkill.Goal(
            skill="pick", instruction="pick up the red cube", target_object="red_cube",
            timeout_s=30.0), kept_feedback.append)
        kept_feedback.clear()
        assert probe.wait(lambda: kept_feedback, 10.0), "no feedback from the kept goal"
        assert probe.wait(lambda: announced and announced[-1].active, 5.0), "no skill announced"
        first_id = announced[-1].skill_id
        publish_chunk(first_id, done=False)
        publish_chunk(first_id, done=True)
        assert probe.wait(lambda: announced[-1].skill_id == f"{first_id}~regrasp1", 5.0), \
            [m.skill_id for m in announced]
        # The fingers open while the arm holds.
        assert probe.wait(lambda: commands and min(commands[-1].points[0].positions[7:]) > 0.039,
                          5.0), "the fingers were not opened"
        time.sleep(0.6)  # past regrasp_open_s: the chunks of frames from now on count
        fingers[0] = 0.025  # a cube between them
        publish_chunk(announced[-1].skill_id, done=False)
        publish_chunk(announced[-1].skill_id, done=True)
        result = probe.wait_future(client.get_result_async(handle), 10.0).result
        assert result.success, result.message
    finally:
        with probe.spin_lock:
            probe.node.destroy_timer(robot)
            probe.node.destroy_publisher(policy)
            probe.node.destroy_publisher(joints)
            for subscription in subscriptions:
                probe.node.destroy_subscription(subscription)
        controller.terminate()
        output, _ = controller.communicate(timeout=10.0)
    assert "regrasping (1 of 1)" in output, output


def _header():
    from std_msgs.msg import Header
    return Header(stamp=sec_to_stamp(time.time()))
