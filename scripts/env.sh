# Source me (bash): puts the .venv, the ROS 2 wheels and the colcon install tree on the paths.
# Made by scripts/setup_env.sh; on a real ROS 2 install source /opt/ros/<distro>/setup.bash and
# your workspace's install/setup.bash instead.
_vla_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$_vla_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="$_vla_root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# colcon's setup scripts reference unset variables; tolerate them even under `set -u`.
_vla_nounset=$([[ $- == *u* ]] && echo 1 || true)
set +u
# shellcheck disable=SC1091
source "$_vla_root/install/setup.bash"
[ -n "$_vla_nounset" ] && set -u
# The project's Fast DDS profile (larger shared-memory segment, fast heartbeats; see the file).
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_vla_root/config/fastdds.xml}"
# Keep this checkout's DDS traffic on this machine unless the user says otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
unset _vla_root _vla_nounset
