"""The skill controller's checks of the fingers, on real rclpy: a pick that says done with the
fingers closed on nothing is started again under a new skill id, with the fingers opened, and
succeeds once a chunk says done with something between them; a place that says done with the
object still between the fingers goes on until they have let go.

The controller runs alone; this test is its policy node (it publishes /vla/action_chunk for
the announced skill) and its robot (it publishes /joint_states with the fingers as it chooses).
"""
from __future__ import annotations

import contextlib
import itertools
import time

import numpy as np
import pytest

from vla_bringup.core.robot import PANDA_JOINT_NAMES
from vla_bringup.nodes.common import (CHUNK_QOS, COMMAND_QOS, LATCHED_QOS, SENSOR_QOS,
                                      sec_to_stamp)
from vla_msgs.action import ExecuteSkill
from vla_msgs.msg import ActionChunk, SkillCommand
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

ARM = [0.0, -0.5, 0.0, -2.2, 0.0, 1.9, 0.8]
HORIZON, DT = 8, 0.1
HOLDING = 0.025  # m per finger: a 5 cm cube between them


class _PolicyAndRobot:
    """Publishes chunks as the policy node and joint states (fingers at `fingers[0]`) as the
    robot; records the announced skills and the controller's commands."""

    def __init__(self, probe, fingers: float) -> None:
        self.probe, self.fingers = probe, [fingers]
        self.announced, self.commands = [], []
        self.chunk_ids = itertools.count(1)
        node = probe.node
        with probe.spin_lock:
            self.policy = node.create_publisher(ActionChunk, "/vla/action_chunk", CHUNK_QOS)
            self.joints = node.create_publisher(JointState, "/joint_states", SENSOR_QOS)
            self.robot = node.create_timer(0.02, lambda: self.joints.publish(JointState(
                name=list(PANDA_JOINT_NAMES), position=ARM + self.fingers * 2)))  # 50 Hz
            self.subscriptions = [
                node.create_subscription(SkillCommand, "/vla/active_skill",
                                         self.announced.append, LATCHED_QOS),
                node.create_subscription(JointTrajectory, "/vla/command_raw",
                                         self.commands.append, COMMAND_QOS)]

    def publish_chunk(self, skill_id: str, done: bool, fingers: float = 0.0,
                      arm: list = ARM) -> None:
        time.sleep(0.1)  # the controller has the joints of the moment
        rows = np.tile(arm + [fingers, fingers], (HORIZON, 1))
        self.policy.publish(ActionChunk(
            header=_header(), policy_name="test", chunk_id=next(self.chunk_ids),
            skill_id=skill_id, joint_names=list(PANDA_JOINT_NAMES), horizon=HORIZON, dt=DT,
            positions=rows.ravel().tolist(), skill_done=done, progress=0.9))

    def start(self, client, goal) -> object:
        """Send `goal`; once its kept try is running and announced, its handle."""
        # On a loaded machine the client may have sent the goal twice (nodes/goal_client.py
        # resends every 2 s) and the controller then starts the skill again under a newer id
        # (CI of 4469dd9 answered the older one). Only the kept try's feedback reaches us after
        # send_goal returns, and the controller sends it after announcing that try's skill.
        kept_feedback = []
        handle = self.probe.send_goal(client, goal, kept_feedback.append)
        kept_feedback.clear()
        assert self.probe.wait(lambda: kept_feedback, 10.0), "no feedback from the kept goal"
        assert self.probe.wait(lambda: self.announced and self.announced[-1].active, 5.0), \
            "no skill announced"
        return handle

    def close(self) -> None:
        with self.probe.spin_lock:
            self.probe.node.destroy_timer(self.robot)
            self.probe.node.destroy_publisher(self.policy)
            self.probe.node.destroy_publisher(self.joints)
            for subscription in self.subscriptions:
                self.probe.node.destroy_subscription(subscription)


@contextlib.contextmanager
def _controller_alone(probe, fingers: float, **params):
    """(controller process, its skill client, the fake policy and robot); the process's output
    is in `outputs` once the block has ended."""
    controller, client = probe.lone_skill_controller(**params)
    fake = _PolicyAndRobot(probe, fingers)
    outputs: list[str] = []
    try:
        yield client, fake, outputs
    finally:
        fake.close()
        controller.terminate()
        outputs.append(controller.communicate(timeout=10.0)[0])


def test_a_pick_done_with_empty_fingers_is_regrasped_then_succeeds(probe):
    with _controller_alone(probe, 0.0005, regrasp_attempts=1,  # closed on nothing
                           regrasp_open_s=0.5) as (client, fake, outputs):
        handle = fake.start(client, ExecuteSkill.Goal(
            skill="pick", instruction="pick up the red cube", target_object="red_cube",
            timeout_s=30.0))
        first_id = fake.announced[-1].skill_id
        fake.publish_chunk(first_id, done=False)
        fake.publish_chunk(first_id, done=True)
        assert probe.wait(lambda: fake.announced[-1].skill_id == f"{first_id}~regrasp1", 5.0), \
            [m.skill_id for m in fake.announced]
        # The fingers open while the arm holds.
        assert probe.wait(lambda: fake.commands and min(
            fake.commands[-1].points[0].positions[7:]) > 0.039, 5.0), "the fingers were not opened"
        time.sleep(0.6)  # past regrasp_open_s: the chunks of frames from now on count
        fake.fingers[0] = HOLDING
        fake.publish_chunk(fake.announced[-1].skill_id, done=False)
        fake.publish_chunk(fake.announced[-1].skill_id, done=True)
        result = probe.wait_future(client.get_result_async(handle), 10.0).result
        assert result.success, result.message
    assert "regrasping (1 of 1)" in outputs[0], outputs[0]


@pytest.mark.parametrize("release_check", [True, False])
def test_a_place_done_with_the_object_still_held_goes_on_until_it_is_let_go(probe,
                                                                             release_check):
    with _controller_alone(probe, HOLDING, release_check=release_check) as (client, fake, _):
        handle = fake.start(client, ExecuteSkill.Goal(
            skill="place", instruction="place the red cube in the tray",
            target_object="red_cube", destination="tray", timeout_s=30.0))
        skill_id = fake.announced[-1].skill_id
        result = client.get_result_async(handle)
        fake.publish_chunk(skill_id, done=False, fingers=HOLDING)
        # Said done with the object still held, the arm's rows somewhere new.
        moved = [joint + 0.05 for joint in ARM]
        fake.publish_chunk(skill_id, done=True, fingers=HOLDING, arm=moved)
        if not release_check:  # taken as said: the place ends at once, the cube in the hand
            answer = probe.wait_future(result, 10.0).result
            assert answer.success, answer.message
            return
        # The chunk runs: the commands head for its rows, and the place has not ended.
        assert probe.wait(lambda: fake.commands and abs(
            fake.commands[-1].points[0].positions[0] - moved[0]) < 1e-6, 5.0), \
            "the done chunk's motion did not run"
        time.sleep(0.5)  # time for a result to reach us, had the done been taken
        assert not result.done(), "the place ended with the object still between the fingers"
        fake.fingers[0] = 0.04  # let go
        fake.publish_chunk(skill_id, done=True, fingers=0.04, arm=moved)
        answer = probe.wait_future(result, 10.0).result
        assert answer.success, answer.message


def _header():
    from std_msgs.msg import Header
    return Header(stamp=sec_to_stamp(time.time()))
