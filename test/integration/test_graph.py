"""The live graph: contract topics carry data, the action works, cancel stops, only safety drives.

One graph per module (start-up costs seconds); the tests run in file order and each leaves the
world in a state the next can start from (different cubes per task).
"""
from __future__ import annotations

import importlib
import os
import re
import threading
import time

import numpy as np
from rclpy.action import get_action_names_and_types
from rclpy.qos import qos_profile_sensor_data
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from vla_bringup.nodes.common import COMMAND_QOS, LATCHED_QOS
from vla_msgs.msg import SceneState

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
STARTUP_S = 60.0
TASK_S = 90.0
# Topics whose producers run all the time (or during any task), with the QoS to listen with.
STREAMED = {
    "/camera/image_raw": qos_profile_sensor_data, "/camera/camera_info": qos_profile_sensor_data,
    "/joint_states": qos_profile_sensor_data, "/vla/perception/image": qos_profile_sensor_data,
    "/clock": 10, "/sim/scene_state": COMMAND_QOS, "/vla/action_chunk": COMMAND_QOS,
    "/vla/command_raw": COMMAND_QOS, "/safety/joint_command": COMMAND_QOS,
    "/vla/task_plan": LATCHED_QOS, "/vla/active_skill": LATCHED_QOS,
    "/safety/status": LATCHED_QOS, "/diagnostics": COMMAND_QOS,
}


def get_message(type_name: str):
    """'pkg/msg/Name' -> the Python message class (rosidl_runtime_py is not on pip)."""
    package, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def readme_graph_rows():
    """(name, kind, type, note) rows of the README's graph table."""
    rows = []
    for line in open(README, encoding="utf-8"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"`/[\w/]+`", cells[0]):
            rows.append((cells[0].strip("`"), cells[1], cells[2].strip("`"), line))
    return rows


class Counter:
    def __init__(self, probe, topics):
        self.counts = dict.fromkeys(topics, 0)
        self.lock = threading.Lock()
        probe.wait(lambda: set(topics) <= set(dict(probe.node.get_topic_names_and_types())), 30.0)
        types = dict(probe.node.get_topic_names_and_types())
        missing = set(topics) - set(types)
        assert not missing, f"topics never appeared on the graph: {missing}"
        for topic, qos in topics.items():
            msg_type = get_message(types[topic][0])
            probe.node.create_subscription(msg_type, topic, self.counter(topic), qos)

    def counter(self, topic):
        def count(_msg) -> None:
            with self.lock:
                self.counts[topic] += 1
        return count


def run_instruction(probe, text: str, timeout_s: float = TASK_S, cancel_after_s=None):
    feedback = []
    handle = probe.send_instruction(text, feedback_callback=feedback.append)
    result_future = handle.get_result_async()
    if cancel_after_s is not None:
        probe.wait(result_future.done, cancel_after_s)
        probe.wait_future(handle.cancel_goal_async(), 5.0)
    return probe.wait_future(result_future, timeout_s), feedback


def latest_scene(probe, timeout_s: float = 5.0) -> SceneState:
    box = []
    sub = probe.node.create_subscription(SceneState, "/sim/scene_state", box.append, COMMAND_QOS)
    assert probe.wait(lambda: box, timeout_s), "no /sim/scene_state"
    probe.node.destroy_subscription(sub)
    return box[-1]


def test_graph_comes_up_and_streams(graph, probe):
    needed = ["/camera/image_raw", "/joint_states", "/safety/joint_command"]
    assert probe.wait(lambda: all(t in dict(probe.node.get_topic_names_and_types())
                                  for t in needed), STARTUP_S), graph.dead()
    assert not graph.dead(), f"nodes died at start-up: {graph.dead()}"


def publisher_nodes(probe, topic: str, expect_some: bool = False) -> set:
    """Names of the nodes publishing `topic`, once discovery has resolved them all."""
    def names():
        return {info.node_name for info in probe.node.get_publishers_info_by_topic(topic)}
    probe.wait(lambda: "_NODE_NAME_UNKNOWN_" not in names() and (names() or not expect_some),
               20.0)
    return names()


def test_only_the_safety_checker_publishes_to_the_robot(graph, probe):
    assert publisher_nodes(probe, "/safety/joint_command", expect_some=True) == {"safety"}
    assert publisher_nodes(probe, "/cmd_vel") <= {"safety"}


def test_readme_graph_table_matches_the_live_graph(graph, probe):
    rows = readme_graph_rows()
    assert len(rows) >= 15, "README graph table not found"
    node = probe.node

    def live_graph():
        return {"topic": dict(node.get_topic_names_and_types()),
                "service": dict(node.get_service_names_and_types()),
                "action": dict(get_action_names_and_types(node))}

    expected = [(name, kind) for name, kind, _, line in rows if "robot:=base" not in line]
    # Discovery is gradual: give the graph time to show every documented name before judging.
    probe.wait(lambda: all(name in live_graph()[kind] for name, kind in expected), 30.0)
    live = live_graph()
    for name, kind, type_name, line in rows:
        if "robot:=base" in line:
            continue  # mobile-base interfaces exist only when the graph drives a base
        assert name in live[kind], f"README lists {kind} {name}, the live graph lacks it"
        assert type_name in live[kind][name], f"{name}: README {type_name}, live {live[kind][name]}"
    documented = {(name, kind) for name, kind, _, _ in rows}
    # rclpy's own plumbing: logging, parameters, type descriptions, the topics and services
    # that implement each action.
    internal = re.compile(r"/(rosout|parameter_events)$|/(describe|get|list|set)_parameters"
                          r"(_atomically)?$|/get_parameter_types$|/get_type_description$"
                          r"|/_action/")
    for kind in ("topic", "service", "action"):
        for name in live[kind]:
            if not internal.search(name) and not name.startswith("/test_probe"):
                assert (name, kind) in documented, f"live {kind} {name} is not in README's table"


def test_instruction_succeeds_and_every_topic_carries_data(graph, probe):
    counter = Counter(probe, STREAMED)
    initial = latest_scene(probe)
    result, feedback = run_instruction(probe, "put the red cube in the tray")
    assert result.result.success, result.result.message
    assert "red_cube" in latest_scene(probe).objects_in_tray
    assert "red_cube" not in initial.objects_in_tray
    skills = {(f.feedback.skill_index, f.feedback.current_skill) for f in feedback}
    assert {index for index, _ in skills} == {0, 1}, skills
    silent = [topic for topic, n in counter.counts.items() if n == 0]
    assert not silent, f"contract topics without data during a task: {silent}"


def test_invalid_instruction_fails_with_a_reason(graph, probe):
    result, _ = run_instruction(probe, "make me a sandwich", timeout_s=10.0)
    assert not result.result.success
    assert "invalid instruction" in result.result.message


def test_instruction_topic_runs_the_same_pipeline(graph, probe):
    plans = []
    probe.node.create_subscription(get_message("vla_msgs/msg/TaskPlan"), "/vla/task_plan",
                                   plans.append, LATCHED_QOS)
    publisher = probe.node.create_publisher(String, "/vla/instruction", COMMAND_QOS)
    assert probe.wait(lambda: publisher.get_subscription_count() > 0, 10.0)
    publisher.publish(String(data="push the green cube to the left"))
    assert probe.wait(lambda: any(p.family == "push" and p.target_object == "green_cube"
                                  for p in plans), 10.0), plans
    # Stop it through a new goal that preempts it, so the next test starts from rest.
    run_instruction(probe, "push the green cube to the left", cancel_after_s=1.0)


def test_cancel_stops_the_arm(graph, probe):
    commands = []
    probe.node.create_subscription(JointTrajectory, "/safety/joint_command",
                                   lambda m: commands.append((time.monotonic(), m)), COMMAND_QOS)
    result, _ = run_instruction(probe, "put the blue cube in the tray", cancel_after_s=2.5)
    cancelled_at = time.monotonic()
    assert not result.result.success
    moving_before = [m for t, m in commands if t < cancelled_at - 0.5]
    assert any(np.max(np.abs(m.points[0].velocities)) > 0.01 for m in moving_before), \
        "the arm never moved before the cancel: the test proves nothing"
    time.sleep(1.0)
    after = [m for t, m in commands if t > cancelled_at + 0.5]
    assert after, "no commands after the cancel"
    speeds = [float(np.max(np.abs(m.points[0].velocities))) for m in after]
    assert max(speeds) < 1e-6, f"arm still commanded to move after cancel: {max(speeds)}"
    positions = np.array([m.points[0].positions for m in after])
    assert np.ptp(positions, axis=0).max() < 1e-6


def latched_status(probe):
    statuses = []
    probe.node.create_subscription(get_message("vla_msgs/msg/SafetyStatus"), "/safety/status",
                                   statuses.append, LATCHED_QOS)
    assert probe.wait(lambda: statuses, 5.0), "no /safety/status"
    return statuses


def test_teleop_jog_outranks_autonomy(graph, probe):
    statuses = latched_status(probe)
    commands = []
    probe.node.create_subscription(JointTrajectory, "/safety/joint_command", commands.append,
                                   COMMAND_QOS)
    jog = probe.node.create_publisher(get_message("vla_msgs/msg/JointJog"), "/teleop/joint_jog",
                                      COMMAND_QOS)
    enable = probe.node.create_publisher(get_message("std_msgs/msg/Bool"), "/teleop/enable",
                                         COMMAND_QOS)
    JointJog, Bool = get_message("vla_msgs/msg/JointJog"), get_message("std_msgs/msg/Bool")
    assert probe.wait(lambda: commands and jog.get_subscription_count() > 0
                      and enable.get_subscription_count() > 0, 10.0)
    start = commands[-1].points[0].positions[0]
    for _ in range(10):  # without the deadman the jog is ignored
        jog.publish(JointJog(joint_names=["panda_joint1"], velocities=[0.3]))
        time.sleep(0.02)
    assert abs(commands[-1].points[0].positions[0] - start) < 1e-6
    assert "deadman" in statuses[-1].last_rejection or probe.wait(
        lambda: "deadman" in statuses[-1].last_rejection, 3.0)
    jog_started = time.monotonic()
    for _ in range(40):  # about 0.8 s of jogging joint 1 at 0.3 rad/s, deadman held
        enable.publish(Bool(data=True))
        jog.publish(JointJog(joint_names=["panda_joint1"], velocities=[0.3]))
        time.sleep(0.02)
    # The jog lives on for the teleop timeout after the last message.
    jog_lasted = time.monotonic() - jog_started + 0.25
    time.sleep(0.3)
    assert any(s.active_source == "teleop" for s in statuses), [s.active_source for s in statuses]
    moved = commands[-1].points[0].positions[0] - start
    # Followed the jog, and never faster than the velocity it asked for.
    assert 0.1 < moved <= 0.3 * jog_lasted + 1e-3, (moved, jog_lasted)


def test_estop_holds_and_reset_needs_the_input_released(graph, probe):
    statuses = latched_status(probe)
    commands = []
    probe.node.create_subscription(JointTrajectory, "/safety/joint_command",
                                   lambda m: commands.append((time.monotonic(), m)), COMMAND_QOS)
    estop = probe.node.create_publisher(get_message("std_msgs/msg/Bool"), "/safety/estop",
                                        COMMAND_QOS)
    reset = probe.node.create_client(get_message("std_srvs/srv/Trigger"), "/safety/reset")
    assert reset.wait_for_service(timeout_sec=5.0)
    assert probe.wait(lambda: estop.get_subscription_count() > 0, 5.0)
    # The command stream reaches the probe before the e-stop (discovery can lag on a busy host).
    assert probe.wait(lambda: commands, 5.0), "no /safety/joint_command before the e-stop"
    Trigger = get_message("std_srvs/srv/Trigger")
    estop.publish(get_message("std_msgs/msg/Bool")(data=True))
    try:
        engaged_at = time.monotonic()
        assert probe.wait(lambda: statuses[-1].estop_engaged, 2.0)
        time.sleep(0.3)
        # At least one command after the e-stop (a busy 2-core host can pause delivery briefly).
        probe.wait(lambda: any(t > engaged_at + 0.1 for t, _ in commands), 2.0)
        held = [m for t, m in commands if t > engaged_at + 0.1]
        assert held and all(max(map(abs, m.points[0].velocities)) == 0.0 for m in held)
        refused = probe.wait_future(reset.call_async(Trigger.Request()), 5.0)
        assert not refused.success and "still active" in refused.message
        estop.publish(get_message("std_msgs/msg/Bool")(data=False))
        time.sleep(0.2)
        assert statuses[-1].estop_engaged, "released without a reset: the e-stop must latch"
        released = probe.wait_future(reset.call_async(Trigger.Request()), 5.0)
        assert released.success, released.message
        assert probe.wait(lambda: not statuses[-1].estop_engaged, 2.0)
    finally:  # a failure here must not leave the e-stop engaged for the tests that follow
        estop.publish(get_message("std_msgs/msg/Bool")(data=False))
        time.sleep(0.1)
        probe.wait(reset.call_async(Trigger.Request()).done, 5.0)


def test_scene_reset_replaces_objects_and_keeps_the_arm(graph, probe):
    before = latest_scene(probe)
    joints = []
    probe.node.create_subscription(get_message("sensor_msgs/msg/JointState"), "/joint_states",
                                   joints.append, qos_profile_sensor_data)
    assert probe.wait(lambda: joints, 5.0)
    arm_before = np.array(joints[-1].position[:7])
    client = probe.node.create_client(get_message("vla_msgs/srv/ResetScene"), "/sim/reset_scene")
    assert client.wait_for_service(timeout_sec=5.0)
    request = get_message("vla_msgs/srv/ResetScene").Request(seed=before.episode_seed + 7)
    response = probe.wait_future(client.call_async(request), 10.0)
    assert response.success, response.message
    assert probe.wait(lambda: latest_scene(probe).episode_seed == request.seed, 5.0)
    assert latest_scene(probe).objects_in_tray == []
    time.sleep(0.5)
    assert np.abs(np.array(joints[-1].position[:7]) - arm_before).max() < 0.05


def test_keyboard_teleop_in_a_terminal_jogs_the_arm_and_stops_it(graph, probe):
    import pty
    import subprocess

    from vla_bringup.cli.launch_embedded import executable_path
    statuses = latched_status(probe)
    controller, terminal = pty.openpty()
    teleop = subprocess.Popen([executable_path("teleop_keyboard")], stdin=terminal,
                              stdout=terminal, stderr=terminal, start_new_session=True)
    try:
        def hold_q() -> bool:  # hold "q" (joint 1 +) until the safety checker follows teleop
            os.write(controller, b"q")
            return any(s.active_source == "teleop" for s in statuses)
        assert probe.wait(hold_q, 20.0, period_s=0.03), "teleop never took over"
        os.write(controller, b" ")  # space: e-stop
        assert probe.wait(lambda: statuses[-1].estop_engaged, 3.0)
        os.write(controller, b"x")  # release and reset
        assert probe.wait(lambda: not statuses[-1].estop_engaged, 3.0)
        os.write(controller, b"\x1b")  # Esc quits
        assert teleop.wait(10.0) == 0
    finally:
        if teleop.poll() is None:
            teleop.kill()
        os.close(controller)
        os.close(terminal)
