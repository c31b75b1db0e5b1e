"""Perception node: camera frames -> validated, preprocessed RGB for the policy.

Subscribes /camera/image_raw; publishes /vla/perception/image (rgb8 at the policy's input size,
stamped with the original capture time) and a /diagnostics report of rate, frame age and
rejections by reason. Malformed frames are counted and logged, never passed on.
"""
from __future__ import annotations

import collections

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from vla_bringup.core import image_conversion as conv
from vla_bringup.nodes.common import (COMMAND_QOS, SENSOR_QOS, declare_parameters, now_sec, run,
                                      stamp_to_sec)


class PerceptionNode(Node):
    def __init__(self) -> None:
        super().__init__("perception")
        self.params = p = declare_parameters(self, "perception")
        self.size = (p["output_height"], p["output_width"])  # (rows, cols)
        self.bridge = None
        if p["use_cv_bridge"] and conv.cv_bridge_available():
            from cv_bridge import CvBridge
            self.bridge = CvBridge()
        self.out_pub = self.create_publisher(Image, "/vla/perception/image", SENSOR_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        self.create_subscription(Image, "/camera/image_raw", self.on_image, SENSOR_QOS)
        self.rejections = collections.Counter()
        self.ages = collections.deque(maxlen=200)  # s, arrival age of recent frames
        self.arrivals = collections.deque(maxlen=200)  # s, arrival times for the rate
        self.forwarded = 0
        self.create_timer(p["stats_period_s"], self.report)
        self.get_logger().info(
            f"perception ready: output {self.size[0]}x{self.size[1]}, conversion "
            f"{'cv_bridge' if self.bridge else 'built-in'}")

    def to_array(self, msg: Image) -> np.ndarray:
        if self.bridge is not None:
            return self.bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough")
        return conv.image_to_array(msg.height, msg.width, msg.encoding, msg.is_bigendian,
                                   msg.step, bytes(msg.data))

    def on_image(self, msg: Image) -> None:
        now = now_sec(self)
        age = now - stamp_to_sec(msg.header.stamp)
        self.arrivals.append(now)
        self.ages.append(age)
        if age > self.params["max_frame_age_s"]:
            self.reject("too_old", f"frame is {age * 1000:.0f} ms old")
            return
        try:
            rgb = conv.to_rgb8(self.to_array(msg), msg.encoding)
            rgb = conv.preprocess_for_policy(rgb, self.size)
        except conv.ImageFormatError as error:
            self.reject(error.reason_code, str(error))
            return
        except Exception as error:  # cv_bridge raises its own types; never crash on a frame
            self.reject("conversion_failed", repr(error))
            return
        out = Image(header=msg.header, **conv.array_to_image_fields(rgb, "rgb8"))
        self.out_pub.publish(out)
        self.forwarded += 1

    def reject(self, reason: str, detail: str) -> None:
        self.rejections[reason] += 1
        self.get_logger().warning(f"rejected camera frame ({reason}): {detail}",
                                  throttle_duration_sec=1.0)

    def report(self) -> None:
        rate = 0.0
        if len(self.arrivals) > 1 and self.arrivals[-1] > self.arrivals[0]:
            rate = (len(self.arrivals) - 1) / (self.arrivals[-1] - self.arrivals[0])
        ages = np.asarray(self.ages) * 1000.0 if self.ages else np.zeros(1)
        level = DiagnosticStatus.OK if rate > 0 and not self.rejections else DiagnosticStatus.WARN
        values = {"rate_hz": f"{rate:.1f}", "frame_age_p50_ms": f"{np.percentile(ages, 50):.1f}",
                  "frame_age_p99_ms": f"{np.percentile(ages, 99):.1f}",
                  "forwarded": str(self.forwarded)}
        values.update({f"rejected_{reason}": str(n) for reason, n in self.rejections.items()})
        status = DiagnosticStatus(level=level, name="vla/perception", hardware_id="camera",
                                  message="no frames" if rate == 0 else "ok",
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self.diag_pub.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))


def main() -> None:
    run(PerceptionNode)


if __name__ == "__main__":
    main()
