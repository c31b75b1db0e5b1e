"""What every node shares: parameter declaration from the specs, QoS choices, time, start-up."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Optional

import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterValueException
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.executors import (ExternalShutdownException, MultiThreadedExecutor,
                             SingleThreadedExecutor)
from rclpy.node import Node
from rclpy.duration import Duration
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, LivelinessPolicy, QoSProfile,
                       ReliabilityPolicy, qos_profile_sensor_data)

from vla_bringup.core.lifeline import LifelineServer, LifelineWatcher, lifeline_name
from vla_bringup.core.params import ParamSpec, specs_for

# Cameras and joint states: newest sample wins, a lost one is replaced by the next.
SENSOR_QOS = qos_profile_sensor_data
# Commands: every message matters, a small queue so a slow reader never works on old commands.
COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST)
# Action chunks: reliable, but only the newest two are worth anything. DDS liveliness with a
# lease tells the skill controller that the policy process stalled or is gone (asserted by the
# DDS threads, so a slow inference alone does not trip it; a dead process on this host is seen
# at once through its lifeline, below). The lease must outlast the scheduling delays of two
# loaded cores: with the VLA policy, a 0.1 s lease raised 3-14 false "policy lost" reports per
# demo run (10 of 10 runs), each a controlled stop and a refused chunk; 0.5 s raised none in
# 10 runs. A stalled policy is then stopped 0.5 s after its last assertion.
POLICY_LEASE_S = 0.5
CHUNK_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE,
                       history=HistoryPolicy.KEEP_LAST, liveliness=LivelinessPolicy.AUTOMATIC,
                       liveliness_lease_duration=Duration(seconds=POLICY_LEASE_S))
# State that late joiners must see (status, plans, active skill): latched.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         history=HistoryPolicy.KEEP_LAST)


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    unit = f" [{spec.unit}]" if spec.unit else ""
    choices = f" one of {list(spec.choices)}" if spec.choices else ""
    descriptor = ParameterDescriptor(description=spec.description + unit + choices,
                                     read_only=spec.read_only)
    if isinstance(spec.default, float) and spec.min is not None:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max), step=0.0)]
    elif (isinstance(spec.default, int) and not isinstance(spec.default, bool)
          and spec.min is not None):
        descriptor.integer_range = [
            IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
    return descriptor


def declare_parameters(node: Node, node_key: str) -> dict:
    """Declare every parameter of `node_key` with its descriptor; return a validated snapshot.

    rclpy checks the numeric ranges itself; choices are checked here so a bad value stops the
    node at start-up with a message naming the parameter.
    """
    values = {}
    for spec in specs_for(node_key):
        value = node.declare_parameter(spec.name, spec.default, _descriptor(spec)).value
        spec.check(value)
        values[spec.name] = value
    return values


def stamp_to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(seconds: float) -> Time:
    sec = int(seconds // 1)
    return Time(sec=sec, nanosec=int(round((seconds - sec) * 1e9)) % 1_000_000_000)


def now_sec(node: Node) -> float:
    return node.get_clock().now().nanoseconds * 1e-9


def image_msg_to_rgb(msg):
    """sensor_msgs/Image -> HxWx3 uint8 RGB (raises core.image_conversion.ImageFormatError)."""
    from vla_bringup.core import image_conversion as conv
    return conv.to_rgb8(conv.image_to_array(msg.height, msg.width, msg.encoding,
                                            msg.is_bigendian, msg.step, bytes(msg.data)),
                        msg.encoding)


def scene_poses(msg) -> dict:
    """vla_msgs/SceneState -> {object name: ObjectPose}."""
    from vla_bringup.policy.base import ObjectPose
    return {name: ObjectPose((p.position.x, p.position.y, p.position.z),
                             (p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w))
            for name, p in zip(msg.object_names, msg.object_poses)}


def config_dir() -> str:
    """The installed config folder (share/vla_bringup/config); VLA_CONFIG_DIR overrides."""
    override = os.environ.get("VLA_CONFIG_DIR")
    if override:
        return override
    from ament_index_python.packages import get_package_share_directory
    return os.path.join(get_package_share_directory("vla_bringup"), "config")


def make_executor(threads: int):
    """threads=1: callbacks run inline on the spinning thread. The multi-threaded executor's
    dispatcher polls while a worker has not yet taken a ready callback, which a SCHED_FIFO
    process (the safety checker, the bench) turns into a core spinning at 90%."""
    return (SingleThreadedExecutor() if threads == 1
            else MultiThreadedExecutor(num_threads=threads))


def node_stopping(node: Node) -> bool:
    """True once Ctrl-C or a shutdown has begun tearing the node down (see `run`)."""
    return getattr(node, "shutting_down", False) or not rclpy.ok(context=node.context)


def quiet_on_shutdown(result_type):
    """Decorate an action server's execute callback: a goal still running when Ctrl-C tears
    the node down finds its publishers and action server destroyed. No client can hear its
    result any more, so it ends with a failed result instead of a traceback in the log."""
    def decorate(execute):
        @functools.wraps(execute)
        def execute_goal(node, goal_handle):
            try:
                return execute(node, goal_handle)
            except Exception:
                if not node_stopping(node):
                    raise
                return result_type(success=False, message="the node shut down")
        return execute_goal
    return decorate


def run(make_node: Callable[[], Node], threads: int = 2) -> None:
    """Start rclpy, spin the node on a multi-threaded executor, shut down cleanly on Ctrl-C.

    A node that takes itself down after a fatal error sets `node.exit_code` first, so that the
    process exits with it (a launcher's respawn and CI see the failure), not with 0."""
    rclpy.init(args=sys.argv)
    node = None
    try:
        try:
            node = make_node()
        except (InvalidParameterValueException, ValueError, FileNotFoundError,
                RuntimeError, ImportError) as error:
            # Bad configuration: one clear line and a non-zero exit, not a traceback.
            print(f"[FATAL] cannot start: {error}", file=sys.stderr, flush=True)
            rclpy.try_shutdown()
            # Leave at once: interpreter teardown of a half-built node crashed once with
            # SIGSEGV here (exit -11 instead of 2), and nothing is left to clean up.
            sys.stdout.flush()
            os._exit(2)
        executor = make_executor(threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError as error:
        if not is_shutdown_race(error):
            raise
    finally:
        if node is not None:
            node.shutting_down = True  # action goals still running end quietly
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    if node is not None and getattr(node, "exit_code", 0):
        sys.exit(node.exit_code)


def is_shutdown_race(error: BaseException, context: Optional[rclpy.Context] = None) -> bool:
    """rclpy's SIGINT handler can shut the context down while the executor builds its wait set;
    that surfaces as an RCLError ("the given context is not valid") instead of
    ExternalShutdownException. It is the same clean stop (the demo saw it as the simulator's
    exit code 1 in 2 of 10 runs). rclpy's bindings can also raise a plain RuntimeError from a
    handle torn down mid-take ("Unable to convert call argument '0' to Python object", the safety
    checker in a test run of session 21): a RuntimeError whose innermost frame is rclpy's own
    code counts too (also when our callback called that code, e.g. a publish after shutdown).
    One raised by our code, or any error while the context is valid, does not."""
    if rclpy.ok(context=context):
        return False
    if isinstance(error, rclpy_implementation.RCLError):
        return True
    return isinstance(error, RuntimeError) and _raised_inside_rclpy(error)


def _raised_inside_rclpy(error: BaseException) -> bool:
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    rclpy_dir = os.path.dirname(os.path.abspath(rclpy.__file__)) + os.sep
    return (frame is not None
            and os.path.abspath(frame.tb_frame.f_code.co_filename).startswith(rclpy_dir))


def serve_lifeline(node: Node) -> LifelineServer:
    """Let same-host watchers see this node's process exit at once (core/lifeline.py)."""
    server = LifelineServer(lifeline_name(node.get_fully_qualified_name()))
    if not server.start():
        node.get_logger().warning(f"no same-host lifeline ({server.error}); watchers of this "
                                  "node rely on DDS timeouts alone")
    return server


def watch_lifeline(node: Node, sibling: str, on_lost: Callable[[], None]) -> LifelineWatcher:
    """Call `on_lost` when the process of `sibling` (a node in this node's namespace) exits."""
    name = lifeline_name(node.get_namespace().rstrip("/") + "/" + sibling)
    return LifelineWatcher(name, on_lost).start()
