"""Which nodes start with which parameters: read from config/nodes.yaml for both launchers.

`launch/robot.launch.py` (real ROS 2) and `vla_bringup.cli.launch_embedded` (no launch_ros) both
call `build_plan`; neither keeps its own node list, so they cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional

import yaml


class LaunchPlanError(ValueError):
    """A launch argument or the node list is invalid; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class NodeLaunch:
    name: str
    executable: str
    param_files: tuple[str, ...]  # absolute paths, applied in order
    overrides: tuple[tuple[str, str], ...]  # (parameter, value) from launch arguments, applied last
    respawn: bool = False  # restart the process when it exits

    def ros_args(self) -> list[str]:
        """The `--ros-args` tail a process needs; `ros2 launch` builds the same from Node()."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for path in self.param_files:
            args += ["--params-file", path]
        for name, value in self.overrides:
            args += ["-p", f"{name}:={value}"]
        return args


def load_node_table(config_dir: str) -> dict:
    path = os.path.join(config_dir, "nodes.yaml")
    with open(path, encoding="utf-8") as stream:
        table = yaml.safe_load(stream)
    if not isinstance(table, dict) or "nodes" not in table or "arguments" not in table:
        raise LaunchPlanError(f"{path}: expected top-level keys 'nodes' and 'arguments'")
    return table


def resolve_arguments(table: dict, given: Mapping[str, str]) -> dict[str, str]:
    """Fill defaults and check every launch argument against its allowed values."""
    declared = table["arguments"]
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise LaunchPlanError(f"unknown launch argument(s) {unknown}; known: {sorted(declared)}")
    resolved = {}
    for name, spec in declared.items():
        value = str(given.get(name, spec.get("default", "")))
        choices = spec.get("choices")
        if choices and value not in choices:
            raise LaunchPlanError(f"{name}:={value} is not one of {choices}")
        resolved[name] = value
    return resolved


def build_plan(config_dir: str, arguments: Optional[Mapping[str, str]] = None) -> list[NodeLaunch]:
    """The nodes to start for these launch arguments, in start order."""
    table = load_node_table(config_dir)
    args = resolve_arguments(table, arguments or {})
    if args["sim"] == "embedded" and args["robot"] != "arm":
        raise LaunchPlanError(
            "robot:=base needs sim:=gazebo or sim:=none: the embedded simulator models only the "
            "Franka Panda arm")
    extra = args.get("config", "")
    if extra and not os.path.isfile(extra):
        raise LaunchPlanError(f"config:={extra}: no such file")
    plan = []
    for entry in table["nodes"]:
        conditions = entry.get("when", {})
        if any(args[arg] not in allowed for arg, allowed in conditions.items()):
            continue
        files = [os.path.join(config_dir, name) for name in entry.get("params", [])]
        if extra:
            files.append(os.path.abspath(extra))
        overrides = tuple((param, args[arg]) for arg, param in entry.get("arguments", {}).items())
        plan.append(NodeLaunch(entry["name"], entry["executable"], tuple(files), overrides,
                               respawn=args["respawn"] == "true"))
    return plan
