"""Every node parameter, declared once: name, default, meaning, unit and allowed range.

Nodes declare these through `vla_bringup.nodes.common.declare_parameters` (ROS descriptors with
ranges, so rclpy itself rejects out-of-range values at start-up and at set time); a unit test
checks that every key in config/*.yaml is declared here and every spec carries a description.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

from vla_bringup.core.skill_executor import RELEASE_CHECK, GraspCheck, SkillTiming

Value = Union[bool, int, float, str]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Value
    description: str
    unit: str = ""
    min: Optional[float] = None  # inclusive; numbers only
    max: Optional[float] = None
    choices: Sequence[str] = ()  # strings only
    read_only: bool = True  # most parameters shape a node at start-up only

    def check(self, value: Value) -> None:
        """Raise ValueError when `value` is outside this spec (used outside rclpy too)."""
        if type(value) is not type(self.default) and not (
                isinstance(self.default, float) and isinstance(value, int)
                and not isinstance(value, bool)):
            raise ValueError(f"{self.name}: expected {type(self.default).__name__}, got {value!r}")
        if self.min is not None and value < self.min:
            raise ValueError(f"{self.name}={value} is below the minimum {self.min} {self.unit}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{self.name}={value} is above the maximum {self.max} {self.unit}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name}={value!r} is not one of {list(self.choices)}")


POLICY_BACKENDS = ("scripted_expert", "vla", "openvla", "lerobot")
ROBOTS = ("arm", "base")
DEVICES = ("auto", "cpu", "cuda")


def _spec(*args, **kwargs) -> ParamSpec:
    return ParamSpec(*args, **kwargs)


NODE_PARAMS: dict[str, tuple[ParamSpec, ...]] = {
    "sim": (
        _spec("seed", 0, "scene seed: cube poses, tray jitter, camera jitter", "", 0, 2**31 - 1),
        _spec("camera_width", 224, "rendered camera image width", "px", 32, 1920),
        _spec("camera_height", 224, "rendered camera image height", "px", 32, 1080),
        _spec("camera_rate_hz", 10.0, "camera frame rate", "Hz", 0.5, 60.0),
        _spec("camera_jitter_m", 0.0, "random offset of the camera eye per scene", "m", 0.0, 0.05),
        _spec("physics_rate_hz", 240.0, "physics step rate", "Hz", 60.0, 2000.0),
        _spec("joint_state_rate_hz", 100.0, "/joint_states publish rate", "Hz", 1.0, 1000.0),
        _spec("real_time_factor", 1.0,
              "simulated seconds per wall second; 1 keeps graph latencies real", "", 0.1, 50.0),
        _spec("publish_clock", True, "publish rosgraph_msgs/Clock on /clock"),
    ),
    "perception": (
        _spec("output_width", 224, "width of the image handed to the policy", "px", 32, 1024),
        _spec("output_height", 224, "height of the image handed to the policy", "px", 32, 1024),
        _spec("max_frame_age_s", 0.5, "frames older than this on arrival are dropped", "s",
              0.01, 10.0),
        _spec("stats_period_s", 2.0, "how often rate/age/rejections are reported", "s", 0.1, 60.0),
        _spec("use_cv_bridge", True, "use cv_bridge when it is importable (real installs)"),
    ),
    "instruction": (
        _spec("max_instruction_length", 200, "longest accepted instruction", "chars", 10, 2000),
        _spec("skill_timeout_s", 30.0, "time allowed per skill before it fails", "s", 1.0, 600.0),
        _spec("skill_feedback_timeout_s", 1.0,
              "no skill feedback for this long: the skill controller is dead, the task fails", "s",
              0.2, 30.0),
        _spec("skill_server_wait_s", 10.0, "wait for the skill controller's action server", "s",
              0.1, 120.0),
    ),
    "policy": (
        _spec("backend", "vla", "policy backend (vla: the built-in learned model; scripted_expert: "
              "the privileged expert of the embedded simulator)", choices=POLICY_BACKENDS),
        _spec("device", "auto", "inference device; auto = cuda when present", choices=DEVICES),
        _spec("checkpoint", "", "checkpoint folder for learned backends ('' = built-in; "
              "openvla and lerobot need one)"),
        _spec("trust_remote_code", False,
              "openvla only: run the model code shipped in the checkpoint folder (real OpenVLA "
              "checkpoints need it; read that code first)"),
        _spec("compile", "none",
              "vla only: torch.compile mode; reduce-overhead = CUDA graphs (on an H200: 0.75 ms "
              "p99 per forward pass against 9.3 ms eager fp16); compiling takes ~20 s at start",
              choices=("none", "default", "reduce-overhead")),
        _spec("inference_rate_hz", 15.0,
              "most chunks per second; each new camera frame triggers one (a checkpoint may "
              "ask for fewer: vla's inference_period_s)",
              "Hz", 0.2, 100.0),
        _spec("chunk_horizon", 16, "actions per chunk", "steps", 1, 256),
        _spec("chunk_dt_s", 0.1, "time between actions of a chunk", "s", 0.005, 1.0),
        _spec("max_observation_age_s", 0.5, "refuse to infer from older camera/joint data", "s",
              0.01, 10.0),
    ),
    "skill_controller": (
        _spec("robot", "arm", "robot kind: arm = joint positions, base = velocities",
              choices=ROBOTS),
        _spec("control_rate_hz", 100.0, "/vla/command_raw stream rate", "Hz", 5.0, 1000.0),
        _spec("blend_time_s", 0.1, "cross-fade when a new chunk replaces the old one", "s",
              0.0, 1.0),
        _spec("max_chunk_age_s", 1.0, "chunks computed from older observations are dropped", "s",
              0.01, 10.0),
        _spec("policy_timeout_s", SkillTiming.policy_timeout_s,
              "no chunk for this long: the arm holds where it is until chunks return", "s",
              0.02, 10.0),
        _spec("starvation_timeout_s", SkillTiming.starvation_timeout_s,
              "no chunk for this long: the skill fails (the arm is held meanwhile)", "s",
              0.1, 60.0),
        _spec("policy_wait_s", 120.0,
              "a skill whose policy node is not up yet (no /vla/action_chunk publisher, e.g. "
              "still loading its model) waits this long for it before failing", "s",
              0.0, 600.0),
        _spec("first_chunk_timeout_s", SkillTiming.first_chunk_timeout_s,
              "wait for the first chunk of a skill", "s", 0.1, 120.0),
        _spec("default_skill_timeout_s", SkillTiming.timeout_s,
              "skill time limit when the goal names none", "s", 1.0, 600.0),
        _spec("regrasp_attempts", GraspCheck.attempts,
              "a pick that reports done with empty fingers (measured closed within empty_grip_m, "
              "or still open) is started again with the fingers open, this many times, then "
              "fails; -1: no check, the pick's done is taken as it comes",
              "", -1, 10),
        _spec("empty_grip_m", GraspCheck.empty_grip_m,
              "fingers (their mean, measured) closed this far hold nothing", "m", 0.001, 0.03),
        _spec("regrasp_open_s", GraspCheck.reopen_s,
              "time the fingers get to open before a regrasp's chunks count", "s", 0.0, 5.0),
        _spec("release_check", RELEASE_CHECK,
              "a place that reports done with the object still between the fingers (measured, "
              "as for regrasp_attempts) goes on until they let go, or times out saying so; "
              "false: the place's done is taken as it comes"),
    ),
    "safety": (
        _spec("robot", "arm", "robot kind: arm = joint positions, base = velocities",
              choices=ROBOTS),
        _spec("limits_file", "robots/panda.yaml",
              "robot limits YAML, absolute or relative to the package's config folder"),
        _spec("control_rate_hz", 100.0, "/safety/joint_command publish rate", "Hz", 5.0, 1000.0),
        _spec("check_workspace", True,
              "reject arm targets whose grasp point leaves the limits file's workspace box "
              "(forward kinematics of the Panda URDF)"),
        _spec("watchdog_timeout_s", 0.1, "autonomy command older than this: controlled stop", "s",
              0.01, 2.0),
        _spec("teleop_timeout_s", 0.25, "teleop command older than this is ignored", "s",
              0.01, 2.0),
        _spec("teleop_requires_enable", True,
              "teleop commands count only while /teleop/enable is true and fresh (deadman)"),
        _spec("teleop_enable_timeout_s", 0.2, "how long one /teleop/enable true lasts", "s",
              0.01, 2.0),
        _spec("heartbeat_topics", "",
              "comma-separated std_msgs/Bool topics that must stay alive (true) or the e-stop "
              "engages; empty = none"),
        _spec("heartbeat_timeout_s", 0.5, "silence on a heartbeat topic that engages the e-stop",
              "s", 0.01, 10.0),
        _spec("status_rate_hz", 2.0, "/safety/status and /diagnostics rate", "Hz", 0.1, 50.0),
        _spec("realtime_priority", 80,
              "SCHED_FIFO priority of the safety process, 0 = normal scheduling; without "
              "CAP_SYS_NICE or an rtprio limit it warns and runs at normal priority", "", 0, 98),
    ),
}


def specs_for(node: str) -> tuple[ParamSpec, ...]:
    try:
        return NODE_PARAMS[node]
    except KeyError:
        raise KeyError(f"no parameter specs for node {node!r}; known: {sorted(NODE_PARAMS)}")


def markdown_reference() -> str:
    """docs/parameters.md, generated from the specs (a unit test keeps the file in step)."""
    lines = ["# Node parameters", "",
             "Generated from `src/vla_bringup/core/params.py` by "
             "`python -m vla_bringup.core.params > docs/parameters.md`. Each node declares these "
             "with a ROS parameter descriptor (description, range), so `ros2 param describe` shows "
             "the same, and out-of-range values stop the node at start-up.", ""]
    for node, specs in NODE_PARAMS.items():
        lines += [f"## {node}", "", "| parameter | default | unit | range | meaning |",
                  "|---|---|---|---|---|"]
        for spec in specs:
            number = "{:d}" if isinstance(spec.default, int) else "{:g}"
            allowed = (" / ".join(spec.choices) if spec.choices else
                       f"{number.format(spec.min)} .. {number.format(spec.max)}"
                       if spec.min is not None else "")
            default = "`\"\"`" if spec.default == "" else f"`{spec.default}`"
            lines.append(f"| `{spec.name}` | {default} | {spec.unit} | {allowed} | "
                         f"{spec.description} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_reference(), end="")
