"""ros2 launch vla_bringup robot.launch.py [sim:=embedded|gazebo|none] [robot:=arm|base]
[policy:=vla|scripted_expert|openvla|lerobot] [device:=auto|cpu|cuda] [respawn:=false|true]
[config:=extra.yaml]

Which nodes start, and with which parameter files, comes from config/nodes.yaml through
vla_bringup.core.launch_plan, the same code the embedded launcher uses (no node list here).
sim:=gazebo starts Gazebo (ros_gz_sim) with the tabletop world and bridges its camera and joint
topics onto the graph's names; sim:=none expects real drivers to provide them.
"""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vla_bringup.core.launch_plan import build_plan

PACKAGE = "vla_bringup"


def _config_dir() -> str:
    return os.path.join(get_package_share_directory(PACKAGE), "config")


def _declared_arguments():
    with open(os.path.join(_config_dir(), "nodes.yaml"), encoding="utf-8") as stream:
        arguments = yaml.safe_load(stream)["arguments"]
    return [DeclareLaunchArgument(name, default_value=str(spec.get("default", "")),
                                  description=spec["description"],
                                  choices=[str(c) for c in spec["choices"]]
                                  if spec.get("choices") else None)
            for name, spec in arguments.items()]


def _gazebo(context):
    """Gazebo + bridge for sim:=gazebo (real installs with ros_gz; not on pip-only machines)."""
    config = _config_dir()
    world = os.path.join(config, "gazebo", "tabletop.sdf")
    gz_launch = os.path.join(get_package_share_directory("ros_gz_sim"), "launch",
                             "gz_sim.launch.py")
    return [
        IncludeLaunchDescription(PythonLaunchDescriptionSource(gz_launch),
                                 launch_arguments={"gz_args": f"-r {world}"}.items()),
        Node(package="ros_gz_bridge", executable="parameter_bridge", name="gz_bridge",
             parameters=[{"config_file": os.path.join(config, "gazebo", "bridge.yaml")}],
             output="screen"),
    ]


def _nodes(context):
    arguments = {name: LaunchConfiguration(name).perform(context)
                 for name in ("sim", "robot", "policy", "device", "respawn", "config")}
    actions = _gazebo(context) if arguments["sim"] == "gazebo" else []
    for node in build_plan(_config_dir(), arguments):
        parameters = list(node.param_files) + ([dict(node.overrides)] if node.overrides else [])
        actions.append(Node(
            package=PACKAGE, executable=node.executable, name=node.name, output="screen",
            parameters=parameters, respawn=node.respawn, respawn_delay=1.0, emulate_tty=True))
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(_declared_arguments() + [OpaqueFunction(function=_nodes)])
