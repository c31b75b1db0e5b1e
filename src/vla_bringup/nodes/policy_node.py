"""Policy node: observations in, action chunks out, inference on a worker thread.

Subscribes /vla/perception/image, /joint_states, /vla/active_skill (and /sim/scene_state only for
privileged backends such as the scripted expert); publishes /vla/action_chunk stamped with the
camera frame it used. Callbacks only store the newest inputs; the backend runs on its own thread,
so sensor callbacks and every other node keep their rates however slow inference is.
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header

from vla_bringup.core import image_conversion as conv
from vla_bringup.core.chunk_schedule import advance_rows, lead_shift
from vla_bringup.nodes.common import (CHUNK_QOS, COMMAND_QOS, LATCHED_QOS, SENSOR_QOS,
                                      declare_parameters, image_msg_to_rgb, is_shutdown_race,
                                      now_sec, run, scene_poses, sec_to_stamp, serve_lifeline,
                                      stamp_to_sec)
from vla_bringup.policy.base import Observation, SkillSpec
from vla_bringup.policy.registry import make_backend
from vla_msgs.msg import ActionChunk, SceneState, SkillCommand


def nearest(history, stamp: float):
    """The entry of a (stamp, ...) history closest in time to `stamp`, or None."""
    return min(history, key=lambda entry: abs(entry[0] - stamp)) if history else None


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        self.params = p = declare_parameters(self, "policy")
        self.backend = make_backend(p["backend"], horizon=p["chunk_horizon"], dt=p["chunk_dt_s"],
                                    device=p["device"], checkpoint=p["checkpoint"],
                                    trust_remote_code=p["trust_remote_code"],
                                    compile_mode=p["compile"])
        self.inputs_lock = threading.Lock()
        self.image = None  # (stamp s, sensor_msgs/Image), decoded when used
        # Short histories, so the observation pairs the frame with the joint state and scene of
        # the same instant rather than whatever arrived last.
        self.joints = collections.deque(maxlen=100)  # (stamp s, names, positions)
        self.scenes = collections.deque(maxlen=10)  # (stamp s, {name: ObjectPose})
        self.skill = None  # SkillSpec or None when idle
        self.wake = threading.Event()  # a new frame or a new skill: worth an inference
        self.chunk_id = 0

        self.chunk_pub = self.create_publisher(ActionChunk, "/vla/action_chunk", CHUNK_QOS)
        self.create_subscription(Image, "/vla/perception/image", self.on_image, SENSOR_QOS)
        self.create_subscription(JointState, "/joint_states", self.on_joints, SENSOR_QOS)
        self.create_subscription(SkillCommand, "/vla/active_skill", self.on_skill, LATCHED_QOS)
        if self.backend.requires_ground_truth:
            self.create_subscription(SceneState, "/sim/scene_state", self.on_scene, COMMAND_QOS)

        # A same-host death notice for the skill controller (core/lifeline.py): if this process
        # dies, the kernel releases its lifeline and the arm is stopped at once, not a lease
        # later.
        self.lifeline = serve_lifeline(self)

        # The slower of inference_rate_hz and the backend's own floor (a checkpoint tuned at one
        # pace: VLAConfig.inference_period_s).
        self.inference_period_s = max(1.0 / p["inference_rate_hz"],
                                      self.backend.min_inference_period_s)
        self.running = True
        self.worker = threading.Thread(target=self.inference_loop, name="inference", daemon=True)
        self.worker.start()
        self.get_logger().info(
            f"policy backend '{self.backend.name}' at {1.0 / self.inference_period_s:.3g} Hz"
            + (f" (inference_rate_hz {p['inference_rate_hz']} capped by the checkpoint's "
               f"inference period {self.backend.min_inference_period_s} s)"
               if self.inference_period_s > 1.0 / p["inference_rate_hz"] else "")
            + f", chunks of {p['chunk_horizon']} x {p['chunk_dt_s']} s"
            + (" (privileged: reads simulator ground truth)"
               if self.backend.requires_ground_truth else ""))

    # --- input callbacks: store only ----------------------------------------------------------
    def on_image(self, msg: Image) -> None:
        # Only the message is kept: it is decoded on the inference thread, and only for the
        # frames that are actually used (none while no skill runs).
        with self.inputs_lock:
            self.image = (stamp_to_sec(msg.header.stamp), msg)
        self.wake.set()

    def on_joints(self, msg: JointState) -> None:
        with self.inputs_lock:
            self.joints.append((stamp_to_sec(msg.header.stamp), list(msg.name),
                                np.asarray(msg.position, dtype=np.float64)))

    def on_scene(self, msg: SceneState) -> None:
        scene = scene_poses(msg)
        with self.inputs_lock:
            self.scenes.append((stamp_to_sec(msg.header.stamp), scene))

    def on_skill(self, msg: SkillCommand) -> None:
        skill = (SkillSpec(msg.skill_id, msg.skill, msg.instruction, msg.target_object,
                           msg.destination) if msg.active else None)
        with self.inputs_lock:
            changed, self.skill = skill != self.skill, skill
        if changed:  # the skill controller repeats the active skill every second
            self.get_logger().info(f"active skill: '{msg.instruction}' ({msg.skill_id})"
                                   if skill else "no active skill: idle")
            self.wake.set()

    # --- inference thread ---------------------------------------------------------------------
    def inference_loop(self) -> None:
        try:
            self._infer_while_running()
        except Exception as error:
            # Ctrl-C shuts rclpy's context down while this thread may be inferring; its next
            # publish then fails (seen as a traceback in the fault tests' graph log). That is
            # the node stopping, not an error; anything else still surfaces.
            if not is_shutdown_race(error):
                raise

    def _infer_while_running(self) -> None:
        # Infer as soon as a new frame arrives (so the frame used is as fresh as possible), but
        # no more often than inference_period_s allows.
        period = self.inference_period_s
        current_skill_id = None
        last_image_stamp = None
        next_allowed = 0.0
        while self.running:
            self.wake.wait(1.0)
            self.wake.clear()
            delay = next_allowed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self.inputs_lock:
                skill, image = self.skill, self.image
                joints = nearest(self.joints, image[0]) if image else None
                scene = nearest(self.scenes, image[0]) if image else None
            if skill is not None and skill.skill_id != current_skill_id:
                self.backend.reset(skill)
                current_skill_id = skill.skill_id
                last_image_stamp = None
            if skill is not None and image is not None and image[0] != last_image_stamp:
                next_allowed = time.monotonic() + period
                if self.infer_and_publish(skill, image, joints, scene):
                    last_image_stamp = image[0]

    def infer_and_publish(self, skill, image, joints, scene) -> bool:
        stamp, msg = image
        age = now_sec(self) - stamp
        if age > self.params["max_observation_age_s"]:
            self.get_logger().warning(f"camera frame is {age:.2f} s old: not inferring",
                                      throttle_duration_sec=2.0)
            return False
        if joints is None or (self.backend.requires_ground_truth and scene is None):
            self.get_logger().info("waiting for joint states / scene state",
                                   throttle_duration_sec=2.0)
            return False
        try:
            rgb = image_msg_to_rgb(msg)
        except conv.ImageFormatError as error:
            self.get_logger().error(f"bad perception image: {error}", throttle_duration_sec=1.0)
            return False
        observation = Observation(stamp=stamp, joint_names=joints[1], joint_positions=joints[2],
                                  skill=skill, image=rgb, scene=scene[1] if scene else None)
        started = time.perf_counter()
        try:
            chunk = self.backend.infer(observation)
        except Exception as error:  # a failing model must not take the node down
            self.get_logger().error(f"{self.backend.name} failed on skill '{skill.instruction}': "
                                    f"{error}", throttle_duration_sec=1.0)
            return False
        inference_ms = (time.perf_counter() - started) * 1000.0
        positions = chunk.positions
        # A backend tuned to chunks arriving late (VLAConfig.action_lead_s) gets its chunk run
        # from that moment on when it came back sooner; the stamp stays the frame's.
        shift = lead_shift(self.backend.min_action_lead_s, now_sec(self) - stamp)
        if shift > 0:
            positions = advance_rows(positions, chunk.dt, shift)
        self.chunk_id += 1
        self.chunk_pub.publish(ActionChunk(
            header=Header(stamp=sec_to_stamp(stamp), frame_id="camera_optical_frame"),
            policy_name=self.backend.name, chunk_id=self.chunk_id,
            skill_id=skill.skill_id, joint_names=list(chunk.joint_names), horizon=chunk.horizon,
            dt=float(chunk.dt), positions=positions.ravel().tolist(),
            skill_done=bool(chunk.skill_done), progress=float(chunk.progress),
            inference_ms=float(inference_ms)))
        return True

    def close(self) -> None:
        self.running = False
        self.wake.set()
        self.worker.join(timeout=2.0)


def main() -> None:
    run(PolicyNode)


if __name__ == "__main__":
    main()
