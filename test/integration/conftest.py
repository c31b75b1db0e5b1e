"""Live-graph fixtures: real nodes, real rclpy, real Fast DDS, in a DDS domain of their own.

The domain id is chosen before rclpy starts, from this process id, so parallel runs on one
machine (two checkouts, CI beside a developer) do not hear each other.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

os.environ["ROS_DOMAIN_ID"] = str(os.environ.get("VLA_TEST_DOMAIN_ID") or 1 + os.getpid() % 100)
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402  (after the domain id is set)
from rclpy.exceptions import InvalidHandle  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402

from vla_bringup.cli.launch_embedded import EmbeddedLaunch, executable_path  # noqa: E402
from vla_bringup.nodes.goal_client import GoalClient  # noqa: E402

pytestmark = pytest.mark.integration
ARTIFACTS = os.path.join(os.path.dirname(__file__), "..", "..", "artifacts")


class Probe:
    """A test-side node spinning in the background, with helpers that wait for things."""

    def __init__(self) -> None:
        self.node = Node("test_probe")
        self.instruction_client = None
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        self.running = True
        # Held by the spin loop around each wait-set build; see action_client.
        self.spin_lock = threading.Lock()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        # Tests create and destroy subscriptions from their own thread while this one spins.
        # When a destroy lands while the executor is building its wait set, rclpy raises
        # InvalidHandle out of spin(); a plain executor.spin() thread then dies and every
        # later wait in the session times out (CI, stop 10). The executor rebuilds its wait
        # set on the next spin_once, so carrying on is correct.
        while self.running and rclpy.ok():
            try:
                with self.spin_lock:
                    self.executor.spin_once(timeout_sec=0.1)
            except InvalidHandle:
                continue

    def action_client(self, action_type, name: str) -> GoalClient:
        """An action client on the probe node (nodes/goal_client.py says why not rclpy's own).
        rclpy's ActionClient joins the node's waitables before its constructor has finished; an
        executor building its wait set in between fails with AttributeError ('_lock') and the
        spin thread dies (CI run of session 9). So the client is made while the spin loop is
        between two spin_once calls."""
        with self.spin_lock:
            return GoalClient(self.node, action_type, name)

    @staticmethod
    def wait(predicate, timeout_s: float, period_s: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(period_s)
        return bool(predicate())

    def send_instruction(self, text: str, feedback_callback=None):
        """Send an instruction goal (one action client per probe); returns the accepted handle."""
        from vla_msgs.action import ExecuteInstruction
        if self.instruction_client is None:
            self.instruction_client = self.action_client(ExecuteInstruction,
                                                         "/vla/execute_instruction")
        return self.send_goal(self.instruction_client, ExecuteInstruction.Goal(instruction=text),
                              feedback_callback)

    def send_goal(self, client: GoalClient, goal, feedback_callback=None):
        """Send a goal and return its accepted handle."""
        assert client.wait_for_server(timeout_sec=60.0), "action server missing"
        handle = client.send_goal(goal, feedback_callback=feedback_callback, timeout_s=20.0)
        assert handle is not None, f"no answer to the goal {goal} within 20 s"
        assert handle.accepted, f"goal rejected: {goal}"
        return handle

    def lone_skill_controller(self, **params):
        """A skill controller process with no policy node beside it (the test may act as one),
        started with these parameters, and a client of its skills."""
        from vla_msgs.action import ExecuteSkill
        arguments = [f"{name}:={value}" for name, value in params.items()]
        controller = subprocess.Popen(
            [executable_path("skill_controller"), "--ros-args"]
            + [item for argument in arguments for item in ("-p", argument)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = self.action_client(ExecuteSkill, "/vla/execute_skill")
        if not client.wait_for_server(timeout_sec=30.0):
            controller.kill()
            raise AssertionError("skill controller did not come up")
        return controller, client

    def wait_future(self, future, timeout_s: float):
        assert self.wait(future.done, timeout_s), f"future not done within {timeout_s} s"
        return future.result()

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5.0)
        self.executor.shutdown()
        self.node.destroy_node()


GRAPH_ARGS = {"policy": "scripted_expert"}


@pytest.fixture(scope="session")
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture(scope="module")
def graph(ros):
    """The whole graph (sim:=embedded) with the scripted expert, node output in a log file.

    Graph behaviour must not hinge on a learned policy's success rate, so these tests pin the
    privileged expert; test_vla_graph.py runs the default learned policy.
    """
    os.makedirs(ARTIFACTS, exist_ok=True)
    log = os.path.join(ARTIFACTS, "integration_graph.log")
    launch = EmbeddedLaunch(GRAPH_ARGS, echo=False, log_path=log).start()
    yield launch
    codes = launch.stop()
    # A node that crashed during the tests shows up here, not as a silent pass.
    crashed = {name: code for name, code in codes.items() if code not in (0, -2)}
    assert not crashed, f"nodes exited badly: {crashed} (see {log})"


@pytest.fixture(scope="module")
def probe(ros):
    probe = Probe()
    yield probe
    probe.close()
