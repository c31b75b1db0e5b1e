"""The README's workspace build command, run for real in a scratch colcon workspace.

colcon stops descending at a folder that is a package, and this repository's root is one
(vla_bringup) with another inside (msg/ = vla_msgs), so the command names both base paths.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
README_COMMAND = "colcon build --base-paths src src/vla_bringup/msg"
VENV = os.path.dirname(os.path.dirname(sys.executable))


def tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line]


def clean_env() -> dict:
    """Only the ROS underlay (here: the venv's wheels), as after sourcing /opt/ros/<distro>."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AMENT_", "COLCON_", "CMAKE_PREFIX", "PYTHONPATH", "LD_LIBRARY"))}
    env["AMENT_PREFIX_PATH"] = VENV
    env["PATH"] = os.path.join(VENV, "bin") + os.pathsep + env["PATH"]
    return env


def test_readme_documents_this_command():
    assert README_COMMAND in open(os.path.join(ROOT, "README.md")).read()


def test_workspace_build_with_the_readme_command(tmp_path):
    if shutil.which("colcon", path=os.path.join(VENV, "bin")) is None:
        pytest.skip("colcon is not installed in this environment")
    package = tmp_path / "src" / "vla_bringup"
    for relative in tracked_files():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, relative), package / relative)
    build = subprocess.run(README_COMMAND.split() + ["--event-handlers", "console_direct-"],
                           cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    install = tmp_path / "install"
    share = install / "vla_bringup" / "share" / "vla_bringup"
    assert (share / "launch" / "robot.launch.py").exists()
    for executable in ("sim", "perception", "instruction", "policy", "skill_controller", "safety"):
        assert os.access(install / "vla_bringup" / "lib" / "vla_bringup" / executable, os.X_OK)
    # The installed tree works on its own: messages import, the plan reads the installed config.
    check = ("from vla_msgs.action import ExecuteInstruction, ExecuteSkill; "
             "from vla_msgs.msg import ActionChunk, SafetyStatus, TaskPlan; "
             "import os, vla_bringup, vla_bringup.core.launch_plan as lp; "
             "from ament_index_python.packages import get_package_share_directory as share; "
             "plan = lp.build_plan(os.path.join(share('vla_bringup'), 'config')); "
             "assert vla_bringup.__file__.startswith(os.environ['WS']), vla_bringup.__file__; "
             "print(len(plan))")
    run = subprocess.run(["bash", "-c", f"source install/setup.bash && python -c \"{check}\""],
                         cwd=tmp_path, env={**clean_env(), "WS": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("6")
