"""core.realtime: SCHED_FIFO for the safety process, or a clear reason why not."""
import os
import subprocess
import sys
import textwrap

import pytest

from vla_bringup.core.realtime import apply_realtime_priority


def test_zero_leaves_scheduling_alone():
    before = os.sched_getscheduler(0)
    assert apply_realtime_priority(0) == (False, "normal scheduling (realtime_priority 0)")
    assert os.sched_getscheduler(0) == before


@pytest.mark.parametrize("bad", [-1, 99, 1.5, True, "80"])
def test_bad_priority_is_refused(bad):
    with pytest.raises(ValueError, match="0..98"):
        apply_realtime_priority(bad)


def test_every_thread_switches_or_the_reason_is_given():
    # In a child process: the test runner itself must stay at normal priority.
    script = textwrap.dedent("""
        import os, sys, threading
        from vla_bringup.core.realtime import apply_realtime_priority
        started = threading.Event()
        stop = threading.Event()
        def worker():
            started.set()
            stop.wait()
        def policy_of(thread_id):
            try:
                return os.sched_getscheduler(thread_id)
            except ProcessLookupError:  # a joined thread can linger in /proc for a moment
                return None
        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        started.wait()
        applied, message = apply_realtime_priority(10)
        later = []
        child = threading.Thread(target=lambda: later.append(os.sched_getscheduler(0)))
        child.start(); child.join()
        policies = {policy_of(int(t)) for t in os.listdir("/proc/self/task")} - {None}
        stop.set(); thread.join()
        print(applied, policies == {os.SCHED_FIFO}, later == [os.SCHED_FIFO],
              sys.getswitchinterval() < 0.005, "|", message)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    flags, message = out.split(" | ")
    applied, all_fifo, inherited, short_switch = (f == "True" for f in flags.split())
    if applied:
        assert all_fifo and inherited and short_switch, out
        assert message == "SCHED_FIFO priority 10 on 2 threads"
    else:
        assert not all_fifo and "normal scheduling" in message, out


def test_reset_on_fork_keeps_child_processes_at_normal_priority():
    script = textwrap.dedent("""
        import os, subprocess, sys
        from vla_bringup.core.realtime import apply_realtime_priority
        applied, _ = apply_realtime_priority(10, reset_on_fork=True)
        mine = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
        child = subprocess.run([sys.executable, "-c",
                                "import os; print(os.sched_getscheduler(0))"],
                               capture_output=True, text=True, check=True).stdout.strip()
        print(applied, mine == os.SCHED_FIFO, int(child) == os.SCHED_OTHER)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    applied, fifo_here, child_normal = (f == "True" for f in out)
    assert child_normal
    assert fifo_here == applied
