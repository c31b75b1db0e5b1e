"""The same-host death notice: a killed process is reported once, a missing one never."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from vla_bringup.core.lifeline import LifelineServer, LifelineWatcher, lifeline_name

HOLDER = ("import sys, time\n"
          "from vla_bringup.core.lifeline import LifelineServer\n"
          "assert LifelineServer(sys.argv[1]).start()\n"
          "print('ready', flush=True)\n"
          "time.sleep(60)\n")


def unique_name() -> str:
    return f"vla_lifeline_test/{uuid.uuid4().hex}"


def hold_in_child(name: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, name], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def wait_for(event: threading.Event, timeout_s: float = 10.0) -> bool:
    return event.wait(timeout_s)


def test_name_carries_domain_and_node():
    assert lifeline_name("/ns/policy", domain_id="17") == "vla_lifeline/17/ns/policy"
    os.environ["ROS_DOMAIN_ID"] = "42"
    try:
        assert lifeline_name("/policy") == "vla_lifeline/42/policy"
    finally:
        del os.environ["ROS_DOMAIN_ID"]
    assert lifeline_name("/policy") == "vla_lifeline/0/policy"


def test_killed_process_is_reported_once_and_a_respawn_is_watched_again():
    name = unique_name()
    lost, connected, losses = threading.Event(), threading.Event(), []
    watcher = LifelineWatcher(name, on_lost=lambda: (losses.append(time.monotonic()), lost.set()),
                              on_connected=connected.set, retry_s=0.05).start()
    child = hold_in_child(name)
    try:
        assert wait_for(connected), "watcher never connected to a live process"
        connected.clear()
        killed_at = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert wait_for(lost), "a SIGKILLed process was not reported"
        assert losses[0] >= killed_at
        respawned = hold_in_child(name)  # the name is free again at once: abstract namespace
        try:
            assert wait_for(connected), "watcher did not watch the respawned process"
            assert len(losses) == 1, "a live process was reported lost"
        finally:
            respawned.kill()
            respawned.wait()
    finally:
        watcher.stop()
        child.kill()


def test_without_robust_mutexes_the_socket_end_still_reports(monkeypatch):
    from vla_bringup.core import lifeline
    monkeypatch.setattr(lifeline, "_PTHREAD", None)  # as on a libc without robust mutexes
    name = unique_name()
    lost, connected = threading.Event(), threading.Event()
    watcher = LifelineWatcher(name, on_lost=lost.set, on_connected=connected.set).start()
    child = hold_in_child(name)  # the child offers its mutex; this watcher ignores it
    try:
        assert wait_for(connected)
        child.kill()
        assert wait_for(lost), "a killed process was not reported through the socket"
    finally:
        watcher.stop()
        child.kill()
        child.wait()


def test_no_process_means_no_report():
    lost = threading.Event()
    watcher = LifelineWatcher(unique_name(), on_lost=lost.set, retry_s=0.02).start()
    time.sleep(0.3)
    watcher.stop()
    assert not lost.is_set(), "a process that never existed was reported lost"
    assert not watcher.connected.is_set()


def test_clean_close_counts_as_gone_and_a_taken_name_is_refused():
    name = unique_name()
    server = LifelineServer(name)
    assert server.start()
    second = LifelineServer(name)
    assert not second.start() and "Address already in use" in second.error
    lost, connected = threading.Event(), threading.Event()
    watcher = LifelineWatcher(name, on_lost=lost.set, on_connected=connected.set).start()
    assert wait_for(connected)
    server.close()
    assert wait_for(lost), "a node that shut down was not reported gone"
    watcher.stop()


def test_a_mutex_in_use_outlives_a_swapped_library_handle(monkeypatch):
    """A watcher still waiting on its mutex when the next test simulates a libc without robust
    mutexes (the module handle set to None) must still unlock it, not raise in its thread."""
    from vla_bringup.core import lifeline
    if lifeline._PTHREAD is None:
        pytest.skip("no robust mutexes on this libc")
    mutex = lifeline._SharedMutex.create()
    try:
        assert mutex.lock(timeout_s=0.5) == 0
        monkeypatch.setattr(lifeline, "_PTHREAD", None)
        mutex.release_after_lock(0)
        assert mutex.lock(timeout_s=0.5) == 0  # it was unlocked: it can be taken again
        mutex.release_after_lock(0)
    finally:
        mutex.close()
