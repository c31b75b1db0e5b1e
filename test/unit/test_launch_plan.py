"""One source of truth: both launchers take their node list from config/nodes.yaml."""
from __future__ import annotations

import ast
import os
import re

import pytest
import yaml

from vla_bringup.core.launch_plan import LaunchPlanError, build_plan, resolve_arguments
from vla_bringup.core.launch_plan import load_node_table

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
CONFIG = os.path.join(ROOT, "config")
LAUNCH_FILE = os.path.join(ROOT, "launch", "robot.launch.py")


def console_scripts() -> set:
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    nodes = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", "") == "NODES")
    return set(ast.literal_eval(nodes.value))


def test_default_plan_starts_the_whole_graph_in_order():
    plan = build_plan(CONFIG)
    assert [n.name for n in plan] == ["sim", "perception", "instruction", "policy",
                                      "skill_controller", "safety"]
    for node in plan:
        assert node.executable in console_scripts(), f"{node.executable} is not a console script"
        for path in node.param_files:
            assert os.path.isfile(path), path
            params = yaml.safe_load(open(path))
            assert node.name in params, f"{path} has no section for node {node.name}"


def test_launch_arguments_become_parameters():
    plan = {n.name: n for n in build_plan(CONFIG, {"policy": "scripted_expert", "device": "cpu"})}
    assert dict(plan["policy"].overrides) == {"backend": "scripted_expert", "device": "cpu"}
    args = plan["policy"].ros_args()
    assert args[:3] == ["--ros-args", "-r", "__node:=policy"]
    assert "device:=cpu" in args


def test_sim_none_leaves_out_the_simulator():
    assert "sim" not in [n.name for n in build_plan(CONFIG, {"sim": "none"})]


def test_extra_config_file_is_layered_last(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("sim:\n  ros__parameters:\n    seed: 4\n")
    for node in build_plan(CONFIG, {"config": str(extra)}):
        assert node.param_files[-1] == str(extra)


@pytest.mark.parametrize("arguments, message", [
    ({"robot": "base"}, "embedded simulator models only"),
    ({"sim": "mujoco"}, "not one of"),
    ({"colour": "red"}, "unknown launch argument"),
    ({"config": "/no/such/file.yaml"}, "no such file"),
])
def test_bad_arguments_are_refused_with_a_reason(arguments, message):
    with pytest.raises(LaunchPlanError, match=message):
        build_plan(CONFIG, arguments)


def test_every_argument_has_a_description_and_a_valid_default():
    table = load_node_table(CONFIG)
    for name, spec in table["arguments"].items():
        assert spec.get("description"), name
    assert resolve_arguments(table, {})["sim"] == "embedded"


def test_ros_launch_file_uses_the_shared_plan_and_declares_every_argument():
    # launch_ros is not installable here, so the launch file is checked by reading it: it must
    # build its nodes from build_plan (no node list of its own) and declare the arguments of
    # nodes.yaml. docs/launch.md records a run with the real launch packages.
    source = open(LAUNCH_FILE).read()
    tree = ast.parse(source)
    calls = {getattr(n.func, "id", getattr(n.func, "attr", "")) for n in ast.walk(tree)
             if isinstance(n, ast.Call)}
    assert {"build_plan", "DeclareLaunchArgument", "Node", "OpaqueFunction"} <= calls
    for executable in console_scripts():
        assert not re.search(rf"executable\s*=\s*['\"]{executable}['\"]", source), \
            f"robot.launch.py names node {executable} itself instead of taking it from the plan"


def test_gazebo_bridge_feeds_the_graph_and_only_safety_drives_the_robot():
    bridge = yaml.safe_load(open(os.path.join(CONFIG, "gazebo", "bridge.yaml")))
    from_gazebo = {b["ros_topic_name"] for b in bridge if b["direction"] == "GZ_TO_ROS"}
    to_gazebo = {b["ros_topic_name"] for b in bridge if b["direction"] == "ROS_TO_GZ"}
    assert {"/camera/image_raw", "/camera/camera_info", "/joint_states", "/clock"} <= from_gazebo
    assert to_gazebo == {"/safety/joint_command"}
    world = open(os.path.join(CONFIG, "gazebo", "tabletop.sdf")).read()
    for entry in bridge:
        if entry["ros_topic_name"] != "/clock":
            assert entry["gz_topic_name"] in world or "/world/tabletop/model/panda" in \
                entry["gz_topic_name"], entry["gz_topic_name"]


def test_the_default_policy_is_the_learned_model():
    plan = {n.name: n for n in build_plan(CONFIG)}
    assert dict(plan["policy"].overrides)["backend"] == "vla"
    from vla_bringup.core.params import NODE_PARAMS
    policy_yaml = yaml.safe_load(open(os.path.join(CONFIG, "policy.yaml")))
    backend = next(spec for spec in NODE_PARAMS["policy"] if spec.name == "backend")
    assert backend.default == "vla"
    assert policy_yaml["policy"]["ros__parameters"]["backend"] == "vla"
