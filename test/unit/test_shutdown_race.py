"""A node's `run` treats the RCLError of a context shut down mid-spin as a clean stop, and only
that (real rclpy; a context of the test's own, so other tests' contexts do not matter)."""
from __future__ import annotations

import rclpy
from rclpy.impl.implementation_singleton import rclpy_implementation

from vla_bringup.nodes.common import is_shutdown_race


def test_only_an_rcl_error_after_shutdown_counts_as_a_clean_stop():
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
    assert not is_shutdown_race(RuntimeError("a real failure in a callback"), context)
