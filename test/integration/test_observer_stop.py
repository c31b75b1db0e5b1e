"""The demo's and bench's observer leaves the DDS graph when it stops, before the graph does.

Its process must hold no endpoints while the graph's nodes exit: a demo once hung in a Fast DDS
deadlock that such an exit set off (nodes/observers.py says more).
"""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

STATUS_TOPIC = "/vla/execute_instruction/_action/status"  # the observer's action client
OBSERVER = """
import sys, time
from vla_bringup.nodes.observers import DemoObserver, start_in_background
_, stop = start_in_background(DemoObserver)
print("up", flush=True)
sys.stdin.readline()
stop()
print("stopped", flush=True)
time.sleep(60)
"""


def test_a_stopped_observer_has_left_the_graph_while_its_process_lives(probe):
    node = probe.node

    def observer_readers() -> int:  # other tests' action clients read the same topic
        return sum(info.node_name == "demo_observer"
                   for info in node.get_subscriptions_info_by_topic(STATUS_TOPIC))
    observer = subprocess.Popen([sys.executable, "-c", OBSERVER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert observer.stdout.readline().strip() == "up"
        assert probe.wait(lambda: "demo_observer" in node.get_node_names()
                     and observer_readers() == 1, 20.0), \
            "the observer never appeared in the graph"
        observer.stdin.write("\n")
        observer.stdin.flush()
        assert observer.stdout.readline().strip() == "stopped"
        # Still running (sleeping), yet gone from the graph: node, action client and all.
        assert probe.wait(lambda: "demo_observer" not in node.get_node_names()
                     and observer_readers() == 0, 10.0), \
            (f"after stop: nodes {node.get_node_names()}, "
             f"{observer_readers()} observer subscription(s) on {STATUS_TOPIC}")
        assert observer.poll() is None
    finally:
        observer.kill()
        observer.wait(10)
