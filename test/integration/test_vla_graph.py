"""The built-in VLA (policy:=vla) drives the live graph from camera + language.

Graph behaviour tests elsewhere pin the scripted expert, so that they do not depend on a learned
policy's success rate. Here the committed checkpoint runs in the policy node: it must load, see
camera frames, publish chunks for the active skill and move the arm through the safety checker.
Whether the task succeeds is measured by `make eval` (closed loop, 100 seeds per family) and
checked by `make demo`; this test asserts the plumbing, with a cancel at the end.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from trajectory_msgs.msg import JointTrajectory

from conftest import ARTIFACTS
from vla_bringup.cli.launch_embedded import EmbeddedLaunch
from vla_bringup.nodes.common import COMMAND_QOS
from vla_bringup.policy.vla.backend import DEFAULT_CHECKPOINT, default_checkpoint_available
from vla_bringup.policy.vla.model import load_config
from vla_msgs.msg import ActionChunk


pytestmark = pytest.mark.skipif(not default_checkpoint_available(),
                                reason="no committed VLA checkpoint")


@pytest.fixture(scope="module")
def graph(ros):
    log = os.path.join(ARTIFACTS, "vla_graph.log")
    os.makedirs(ARTIFACTS, exist_ok=True)
    launch = EmbeddedLaunch({"policy": "vla"}, echo=False, log_path=log).start()
    yield launch
    codes = launch.stop()
    crashed = {name: code for name, code in codes.items() if code not in (0, -2)}
    assert not crashed, f"nodes exited badly: {crashed} (see {log})"


def test_learned_policy_moves_the_arm_for_an_instruction(graph, probe):
    chunks, commands, received = [], [], []

    def on_chunk(msg):
        chunks.append(msg)
        received.append(time.monotonic())
    probe.node.create_subscription(ActionChunk, "/vla/action_chunk", on_chunk, COMMAND_QOS)
    probe.node.create_subscription(JointTrajectory, "/safety/joint_command",
                                   lambda m: commands.append((time.monotonic(), m)), COMMAND_QOS)
    assert probe.wait(lambda: commands, 60.0), f"no robot commands; dead: {graph.dead()}"
    # The policy loads its model after the rest of the graph is up (the skill would wait for
    # it too); the chunk budget below is for inference only.
    assert probe.wait(lambda: probe.node.count_publishers("/vla/action_chunk") > 0, 120.0), \
        f"the vla policy node never came up; dead: {graph.dead()}"
    handle = probe.send_instruction("put the red cube in the tray")
    started = time.monotonic()
    assert probe.wait(lambda: len(chunks) >= 10, 30.0), \
        f"the vla policy published {len(chunks)} chunks in 30 s; dead: {graph.dead()}"
    probe.wait(lambda: time.monotonic() - started > 3.0, 5.0)
    probe.wait_future(handle.cancel_goal_async(), 10.0)
    # The checkpoint asks for a frame at most every inference_period_s (it was tuned at that
    # pace): chunks come no faster, however quick the forward pass (one frame of slack).
    floor = load_config(DEFAULT_CHECKPOINT).inference_period_s
    gaps = np.diff(received)
    assert floor > 0 and np.median(gaps) >= floor - 0.1, \
        f"chunks {np.median(gaps):.3f} s apart (median) under a {floor} s inference period"
    skills = {c.skill_id for c in chunks}
    assert len(skills) >= 1 and all(c.skill_id for c in chunks)
    assert {c.policy_name for c in chunks} == {"vla"}
    first = chunks[0]
    positions = np.asarray(first.positions, dtype=float).reshape(first.horizon, -1)
    assert positions.shape[1] == 9 and np.all(np.isfinite(positions))
    moved = [m for t, m in commands if t >= started]
    assert moved, "no commands after the instruction"
    start = np.asarray(moved[0].points[0].positions)
    travel = max(float(np.max(np.abs(np.asarray(m.points[0].positions) - start)))
                 for m in moved)
    assert travel > 0.02, f"the arm moved at most {travel:.4f} rad in 3 s under the learned policy"
