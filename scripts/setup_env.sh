#!/usr/bin/env bash
# One-command set-up for machines without an apt ROS 2 install:
#   .venv with the ROS 2 Kilted core wheels + torch + pybullet (requirements.txt),
#   the wheels' hard-coded build paths rewritten to this venv,
#   vla_msgs and vla_bringup built with colcon into ./install.
# Idempotent: each stage keeps a stamp (hash of its inputs) and is skipped when nothing changed.
# On a real ROS 2 install none of this is needed; see README "On a real ROS 2 install".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
cd "$ROOT"

say() { printf '[setup] %s\n' "$*"; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

find_python311() {
  # The ROS 2 wheels on PyPI are CPython 3.11 builds only.
  local candidate
  for candidate in "${VLA_PYTHON:-}" python3.11 python3 /usr/bin/python3.11 /usr/local/bin/python3.11; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

# --- stage 1: the virtual environment -------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  if ! PYTHON="$(find_python311)"; then
    cat >&2 <<'EOF'
[setup] ERROR: Python 3.11 is required (the ROS 2 Kilted wheels on PyPI are built for CPython 3.11
        only) and none was found as python3.11 or python3.
        Install it, e.g. on Debian 12 / Ubuntu 22.04+:  sudo apt-get install python3.11 python3.11-venv
        or with pyenv:  pyenv install 3.11 && pyenv local 3.11
        or point VLA_PYTHON at a Python 3.11 interpreter, then run this again.
EOF
    exit 2
  fi
  say "creating .venv with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

# --- stage 2: packages + the path fix -------------------------------------------------------
REQ_STAMP="$VENV/.vla-requirements.stamp"
req_hash="$(hash_of requirements.txt)"
if [ "$(cat "$REQ_STAMP" 2>/dev/null)" != "$req_hash" ]; then
  # The packages take about 2.3 GB in .venv, plus pip's unpacking space: say so up front
  # rather than let pip die half-way with "No space left on device".
  need_kb=$(( 3 * 1024 * 1024 ))
  for where in "$ROOT" "${TMPDIR:-/tmp}"; do
    free_kb="$(df -Pk "$where" 2>/dev/null | awk 'NR == 2 { print $4 }')"
    if [ -n "$free_kb" ] && [ "$free_kb" -lt "$need_kb" ]; then
      echo "[setup] ERROR: only $(( free_kb / 1024 )) MiB free on the disk of $where; installing" \
        "the packages needs about 3 GiB (free some space, or point TMPDIR elsewhere)" >&2
      exit 1
    fi
  done
  say "installing requirements.txt into .venv (first time: a few minutes)"
  start=$(date +%s)
  # pip's config on some machines names local indexes that may be absent: drop those warnings.
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$VENV/bin/python" -c "import rclpy, torch, pybullet" >/dev/null 2>&1 \
    || { echo "[setup] ERROR: install incomplete (see pip output above)" >&2; exit 1; }
  # The wheels' CMake files and ament index entries name the manylinux build prefix; point them
  # at this venv so colcon can build interfaces against them (re-applied after every install).
  PY_INCLUDE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  PY_SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  grep -rlI "/opt/python/cp311-cp311" "$VENV/share" 2>/dev/null | while read -r file; do
    sed -i \
      -e "s|/opt/python/cp311-cp311/include/python3.11|$PY_INCLUDE|g" \
      -e "s|/opt/python/cp311-cp311/lib/python3.11/site-packages|$PY_SITE|g" \
      -e "s|/opt/python/cp311-cp311|$VENV|g" "$file"
  done || true  # grep finds nothing when the paths were already fixed
  echo "$req_hash" > "$REQ_STAMP"
  say "packages installed in $(( $(date +%s) - start )) s"
fi

# --- stage 3: colcon build of vla_msgs + vla_bringup ------------------------------------------
# The repository root is the package vla_bringup and msg/ is the package vla_msgs; colcon does
# not look inside a package, so both paths are named (the same command a ROS 2 user runs from
# a workspace: see README).
BUILD_STAMP="$ROOT/install/.vla-build.stamp"
# Inputs: interface files, packaging, and the names of installed data files (symlinked, so
# their contents update without a rebuild; a new file needs one).
build_hash="$( { hash_of $(find msg -type f | sort) package.xml setup.py setup.cfg "$REQ_STAMP"; \
  find config launch -type f | sort; } | sha256sum | cut -c1-16)"
if [ "$(cat "$BUILD_STAMP" 2>/dev/null)" != "$build_hash" ] || [ ! -d install/vla_bringup ]; then
  say "building vla_msgs and vla_bringup with colcon"
  start=$(date +%s)
  export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export PATH="$VENV/bin:$PATH"
  mkdir -p log
  colcon --log-base log build --symlink-install --base-paths . msg \
    --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" \
    --event-handlers console_direct- >log/colcon-build.txt 2>&1 \
    || { mkdir -p log; tail -40 log/colcon-build.txt >&2; echo "[setup] ERROR: colcon build failed (log/colcon-build.txt)" >&2; exit 1; }
  echo "$build_hash" > "$BUILD_STAMP"
  say "built in $(( $(date +%s) - start )) s"
fi
say "ready: source scripts/env.sh to use the graph from a shell"
