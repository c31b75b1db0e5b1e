"""Embedded launcher: starts the same nodes as launch/robot.launch.py where launch_ros is absent.

    launch_embedded [sim:=embedded] [robot:=arm] [policy:=vla] [device:=auto]
                    [respawn:=true|false] [config:=extra.yaml]

Reads config/nodes.yaml through core.launch_plan (the one source of truth), starts each node's
console script as its own process with the same parameter files, prefixes their output with the
node name, and on Ctrl-C (or SIGTERM) stops them all: SIGINT, then SIGTERM, then SIGKILL.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Mapping, Optional, Sequence

from vla_bringup.core.launch_plan import LaunchPlanError, NodeLaunch, build_plan

STOP_GRACE_S = 5.0
RESPAWN_DELAY_S = 1.0  # same as robot.launch.py's respawn_delay


def executable_path(name: str) -> str:
    """Where colcon installed the node's console script (install/vla_bringup/lib/vla_bringup)."""
    from ament_index_python.packages import get_package_prefix
    path = os.path.join(get_package_prefix("vla_bringup"), "lib", "vla_bringup", name)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} missing: build the workspace (make setup) first")
    return path


def default_config_dir() -> str:
    from vla_bringup.nodes.common import config_dir  # imports rclpy; only the launcher needs it
    return config_dir()


class EmbeddedLaunch:
    """The running graph: one process per node of the plan."""

    def __init__(self, arguments: Optional[Mapping[str, str]] = None,
                 config_dir: Optional[str] = None, echo: bool = True,
                 log_path: Optional[str] = None) -> None:
        config_dir = config_dir or default_config_dir()
        self.plan: list[NodeLaunch] = build_plan(config_dir, arguments)
        # The project's Fast DDS profile (config/fastdds.xml) unless the user brought one.
        profile = os.path.join(config_dir, "fastdds.xml")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if os.path.isfile(profile):
            self.env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", profile)
        self.respawn = any(node.respawn for node in self.plan)
        self.echo = echo
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None
        self.processes: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self.stopping = False
        self.output_lock = threading.Lock()

    def start(self) -> "EmbeddedLaunch":
        for node in self.plan:
            self._spawn(node)
        if self.respawn:
            threading.Thread(target=self._watch, name="respawn", daemon=True).start()
        return self

    def _spawn(self, node: NodeLaunch) -> None:
        command = [executable_path(node.executable)] + node.ros_args()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1, start_new_session=True,
                                   env=self.env)
        self.processes[node.name] = process
        threading.Thread(target=self._pump, args=(node.name, process), daemon=True).start()

    def _pump(self, name: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._say(name, line)

    def _watch(self) -> None:
        exited_at: dict[str, float] = {}
        while not self.stopping:
            for node in self.plan:
                process = self.processes.get(node.name)
                if not node.respawn or process is None or process.poll() is None:
                    continue
                # Wait RESPAWN_DELAY_S first, as launch_ros's respawn_delay does.
                first_seen = exited_at.setdefault(node.name, time.monotonic())
                if time.monotonic() - first_seen >= RESPAWN_DELAY_S and not self.stopping:
                    del exited_at[node.name]
                    self.restarts[node.name] = self.restarts.get(node.name, 0) + 1
                    self._say("launch", f"{node.name} exited with {process.returncode}; "
                                        f"respawning (restart {self.restarts[node.name]})\n")
                    self._spawn(node)
            time.sleep(0.1)

    def _say(self, name: str, line: str) -> None:
        with self.output_lock:
            if self.echo:
                sys.stdout.write(f"[{name}] {line}")
                sys.stdout.flush()
            if self.log:
                self.log.write(f"[{name}] {line}")
                self.log.flush()

    def dead(self) -> dict[str, int]:
        """Nodes that have exited, with their exit codes."""
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Fault injection for tests: signal one node's process."""
        self.processes[name].send_signal(sig)

    def stop(self) -> dict[str, int]:
        self.stopping = True
        for sig, wait_s in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 2.0),
                            (signal.SIGKILL, 2.0)):
            alive = [p for p in self.processes.values() if p.poll() is None]
            if alive and sig != signal.SIGINT:  # their exit codes may then read -15 or -9: say why
                names = [n for n, p in self.processes.items() if p in alive]
                self._say("launch", f"{', '.join(names)} still running: sending "
                                    f"{signal.Signals(sig).name}\n")
            for process in alive:
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            for process in alive:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        if self.log:
            self.log.close()
        return {name: p.returncode for name, p in self.processes.items()}

    def __enter__(self) -> "EmbeddedLaunch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_arguments(argv: Sequence[str]) -> dict[str, str]:
    arguments = {}
    for token in argv:
        if ":=" not in token:
            raise LaunchPlanError(f"expected name:=value, got {token!r}")
        key, value = token.split(":=", 1)
        arguments[key] = value
    return arguments


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        launch = EmbeddedLaunch(parse_arguments(sys.argv[1:] if argv is None else argv))
    except (LaunchPlanError, FileNotFoundError) as error:
        print(f"launch_embedded: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    launch.start()
    print(f"[launch] started {', '.join(n.name for n in launch.plan)} "
          f"(ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}); Ctrl-C stops", flush=True)
    while not stop.wait(0.5):
        dead = launch.dead()
        if dead and not launch.respawn:
            print(f"[launch] node(s) exited: {dead}; stopping the rest", flush=True)
            break
    codes = launch.stop()
    print(f"[launch] stopped: {codes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
