"""Embedded simulator node: the PyBullet tabletop world as a robot + camera driver.

Publishes /camera/image_raw, /camera/camera_info, /joint_states, /clock and the ground truth on
/sim/scene_state; follows /safety/joint_command (nothing else moves the simulated arm).
Physics runs on its own thread, paced to `real_time_factor`; rendering and publishing happen on
that thread too, so the executor only serves the command subscription and the reset service.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import Pose
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Header
from trajectory_msgs.msg import JointTrajectory
from rclpy.node import Node

from vla_bringup.core.image_conversion import array_to_image_fields
from vla_bringup.nodes.common import (COMMAND_QOS, SENSOR_QOS, declare_parameters, run,
                                      sec_to_stamp)
from vla_bringup.sim.world import TabletopWorld
from vla_msgs.msg import SceneState
from vla_msgs.srv import ResetScene

# If the physics thread falls this far behind the wall clock (a stall), it stops trying to
# catch up and re-anchors, rather than running a burst of fast-forward steps.
MAX_LAG_S = 0.25


class SimNode(Node):
    def __init__(self) -> None:
        super().__init__("sim")
        self.params = p = declare_parameters(self, "sim")
        self.world = TabletopWorld(seed=p["seed"], image_width=p["camera_width"],
                                   image_height=p["camera_height"],
                                   time_step=1.0 / p["physics_rate_hz"],
                                   camera_jitter_m=p["camera_jitter_m"])
        self.seed = p["seed"]
        self.lock = threading.Lock()  # guards the world between physics thread and callbacks
        self.pending_command = None  # (names, positions) from the latest /safety/joint_command

        self.image_pub = self.create_publisher(Image, "/camera/image_raw", SENSOR_QOS)
        self.info_pub = self.create_publisher(CameraInfo, "/camera/camera_info", SENSOR_QOS)
        self.joint_pub = self.create_publisher(JointState, "/joint_states", SENSOR_QOS)
        self.scene_pub = self.create_publisher(SceneState, "/sim/scene_state", COMMAND_QOS)
        self.clock_pub = (self.create_publisher(Clock, "/clock", 10)
                          if p["publish_clock"] else None)
        self.create_subscription(JointTrajectory, "/safety/joint_command", self.on_command,
                                 COMMAND_QOS)
        self.create_service(ResetScene, "/sim/reset_scene", self.on_reset)

        # Stamps are epoch + simulated time; the epoch is the wall clock at start, so at
        # real_time_factor 1 they agree with every other node's clock.
        self.epoch = time.time()
        self.running = True
        self.thread = threading.Thread(target=self.physics_loop, name="physics", daemon=True)
        self.thread.start()
        self.get_logger().info(
            f"embedded PyBullet world ready: seed {self.seed}, camera "
            f"{p['camera_width']}x{p['camera_height']} @ {p['camera_rate_hz']} Hz, "
            f"real-time factor {p['real_time_factor']}")

    # --- callbacks (executor threads) ---------------------------------------------------------
    def on_command(self, msg: JointTrajectory) -> None:
        if not msg.points:
            return
        positions = np.asarray(msg.points[0].positions, dtype=np.float64)
        if len(positions) != len(msg.joint_names) or not np.all(np.isfinite(positions)):
            self.get_logger().error("ignoring malformed /safety/joint_command",
                                    throttle_duration_sec=1.0)
            return
        self.pending_command = (list(msg.joint_names), positions)

    def on_reset(self, request: ResetScene.Request, response: ResetScene.Response):
        with self.lock:
            try:
                # Objects are re-placed; the arm stays where the safety checker holds it.
                self.world.reset(int(request.seed), joint_positions=self.world.joint_state()[1])
            except Exception as error:  # a bad seed must not kill the simulator
                response.success, response.message = False, f"reset failed: {error}"
                return response
            self.seed = int(request.seed)
            self.pending_command = None
        response.success, response.message = True, f"scene reset with seed {request.seed}"
        self.get_logger().info(response.message)
        return response

    # --- physics thread -----------------------------------------------------------------------
    def physics_loop(self) -> None:
        try:
            self._physics_loop()
        except Exception as error:
            if self.running and rclpy.ok():
                # A dead simulator must be visible: log it and take the node down.
                self.get_logger().fatal(f"physics thread failed: {error!r}")
                self.exit_code = 1
                rclpy.try_shutdown()
            # else: shutting down; publishers may already be gone

    def _physics_loop(self) -> None:
        p = self.params
        rtf = p["real_time_factor"]
        periods = {"joints": 1.0 / p["joint_state_rate_hz"], "camera": 1.0 / p["camera_rate_hz"]}
        due = dict.fromkeys(periods, 0.0)
        wall_start = time.monotonic()
        sim_start = self.world.sim_time
        while self.running:
            with self.lock:
                command, self.pending_command = self.pending_command, None
                if command is not None:
                    self.world.set_joint_targets(*command)
                self.world.step()
                sim_t = self.world.sim_time
                stamp = self.epoch + sim_t
                if self.clock_pub is not None:
                    self.clock_pub.publish(Clock(clock=sec_to_stamp(stamp)))
                for stream, period in periods.items():
                    if sim_t >= due[stream]:
                        due[stream] = sim_t + period
                        getattr(self, f"publish_{stream}")(stamp)
            # Pace to the wall clock: sleep until this step is due, re-anchor after a stall.
            lag = (time.monotonic() - wall_start) - (sim_t - sim_start) / rtf
            if lag < 0:
                time.sleep(-lag)
            elif lag > MAX_LAG_S:
                # The simulated world skips the stalled interval: stamps stay on the wall clock.
                self.epoch += lag
                wall_start, sim_start = time.monotonic(), sim_t

    def header(self, stamp: float, frame_id: str) -> Header:
        return Header(stamp=sec_to_stamp(stamp), frame_id=frame_id)

    def publish_joints(self, stamp: float) -> None:
        names, positions, velocities, efforts = self.world.joint_state()
        self.joint_pub.publish(JointState(
            header=self.header(stamp, "world"), name=list(names),
            position=positions.tolist(), velocity=velocities.tolist(), effort=efforts.tolist()))

    def publish_camera(self, stamp: float) -> None:
        # The ground truth goes out with every frame, under the same stamp, so a privileged
        # policy sees the scene exactly as the camera did.
        self.publish_scene(stamp)
        rgb = self.world.render()
        header = self.header(stamp, self.world.camera_frame_id)
        self.image_pub.publish(Image(header=header, **array_to_image_fields(rgb, "rgb8")))
        fx, fy, cx, cy = self.world.camera_intrinsics()
        height, width = rgb.shape[:2]
        self.info_pub.publish(CameraInfo(
            header=header, height=height, width=width, distortion_model="plumb_bob",
            d=[0.0] * 5, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
            r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def publish_scene(self, stamp: float) -> None:
        msg = SceneState(header=self.header(stamp, "world"), episode_seed=self.seed)
        for name, pose in self.world.object_poses().items():
            msg.object_names.append(name)
            out = Pose()
            out.position.x, out.position.y, out.position.z = map(float, pose.position)
            (out.orientation.x, out.orientation.y, out.orientation.z,
             out.orientation.w) = map(float, pose.orientation)
            msg.object_poses.append(out)
        msg.objects_in_tray = list(self.world.objects_in_tray())
        self.scene_pub.publish(msg)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=2.0)
        self.world.close()


def main() -> None:
    run(SimNode)


if __name__ == "__main__":
    main()
