"""A node's `run` treats the RCLError of a context shut down mid-spin as a clean stop, and only
that (real rclpy; a context of the test's own, so other tests' contexts do not matter); a node
that takes itself down after a fatal error exits with its own code."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import rclpy
from rclpy.impl.implementation_singleton import rclpy_implementation

from vla_bringup.nodes.common import is_shutdown_race


def test_only_rclpy_errors_after_shutdown_count_as_a_clean_stop():
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        # While the context is valid an RCLError is a real failure (e.g. a timer not created).
        assert not is_shutdown_race(rclpy_implementation.RCLError("failed"), context)
    finally:
        rclpy.shutdown(context=context)
    race = rclpy_implementation.RCLError("failed to initialize wait set: the given context is "
                                         "not valid")
    assert is_shutdown_race(race, context)
    # Any other RuntimeError is not swallowed, even after shutdown.
    assert not is_shutdown_race(raised(RuntimeError("a real failure in a callback")), context)
    # ... unless rclpy's own code raised it (a binding failing on a handle torn down mid-take).
    teardown = RuntimeError("Unable to convert call argument '0' to Python object")
    inside = raised(teardown, os.path.join(os.path.dirname(rclpy.__file__), "executors.py"))
    assert is_shutdown_race(inside, context)
    running = rclpy.Context()
    rclpy.init(context=running)
    try:
        assert not is_shutdown_race(inside, running)
    finally:
        rclpy.shutdown(context=running)


def raised(error: BaseException, filename: str = __file__) -> BaseException:
    """`error` with a traceback whose innermost frame is in `filename`."""
    try:
        exec(compile("raise error", filename, "exec"), {"error": error})
    except BaseException as caught:
        return caught
    raise AssertionError("not raised")


def test_a_node_that_takes_itself_down_exits_with_its_code():
    # As the simulator does when its physics thread fails: exit_code, then shutdown.
    script = textwrap.dedent("""
        import rclpy
        from rclpy.node import Node
        from vla_bringup.nodes.common import run

        class Failing(Node):
            def __init__(self):
                super().__init__("failing_node")
                self.create_timer(0.1, self.fail)

            def fail(self):
                self.exit_code = 3
                rclpy.try_shutdown()

        run(Failing)
        """)
    env = {**os.environ, "ROS_DOMAIN_ID": "97", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 3, done.stdout + done.stderr
