"""Real-time scheduling for the process that guards the robot (Linux; no rclpy).

Why: on a shared machine the safety checker competes with rendering, physics and inference for
the cores; a normal-priority thread that is due to publish a stop can wait tens of milliseconds
for a core. SCHED_FIFO lets it preempt every normal task the moment it wakes. The whole process
is switched (every existing thread, and threads created later inherit the policy), because the
DDS receive threads are on the path of an e-stop just as much as the control loop is.

Python threads also share one interpreter lock; a thread that wants it waits up to the switch
interval (5 ms by default) for the holder to let go. The safety process shortens that interval.

Needs CAP_SYS_NICE or an rtprio limit (e.g. `@realtime - rtprio 98` in limits.conf, as
ros2_control's real-time set-up documents). Without it nothing changes and the caller gets a
message saying why, so the node can warn and go on at normal priority.
"""
from __future__ import annotations

import os
import sys

GIL_SWITCH_INTERVAL_S = 0.0005  # s; Python's default is 0.005


def process_thread_ids() -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir("/proc/self/task"))
    except OSError:
        return [os.getpid()]


def apply_realtime_priority(priority: int, reset_on_fork: bool = False) -> tuple[bool, str]:
    """Put every thread of this process on SCHED_FIFO at `priority` (1..98); 0 does nothing.

    `reset_on_fork`: tasks created afterwards (threads and child processes) start at normal
    priority, for a tool that launches other programs (the bench starts the graph's nodes).
    Returns (applied, message). Never raises for a missing permission or platform support.
    """
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 98:
        raise ValueError(f"real-time priority must be an integer in 0..98, got {priority!r}")
    if priority == 0:
        return False, "normal scheduling (realtime_priority 0)"
    if not hasattr(os, "sched_setscheduler"):
        return False, "SCHED_FIFO is not available on this platform; normal scheduling"
    threads = process_thread_ids()
    policy = os.SCHED_FIFO | (os.SCHED_RESET_ON_FORK if reset_on_fork else 0)
    try:
        for thread_id in threads:
            try:
                os.sched_setscheduler(thread_id, policy, os.sched_param(priority))
            except ProcessLookupError:
                pass  # a thread that ended since it was listed
    except PermissionError:
        return False, ("no permission for SCHED_FIFO (needs CAP_SYS_NICE or an rtprio limit); "
                       "normal scheduling")
    except OSError as error:
        return False, f"SCHED_FIFO refused ({error}); normal scheduling"
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return True, f"SCHED_FIFO priority {priority} on {len(threads)} threads"
