"""Policy backends by name: what `policy:=<backend>` selects."""
from __future__ import annotations

from vla_bringup.core.params import POLICY_BACKENDS
from vla_bringup.policy.base import PolicyBackend


def make_backend(name: str, *, horizon: int, dt: float, device: str = "auto",
                 checkpoint: str = "", trust_remote_code: bool = False,
                 compile_mode: str = "none") -> PolicyBackend:
    if name == "scripted_expert":
        # Privileged: reads the simulator's ground truth; a baseline and data source, not a VLA.
        from vla_bringup.policy.scripted_expert import ScriptedExpert
        return ScriptedExpert(horizon=horizon, dt=dt)
    if name == "vla":
        # The built-in Vision-Language-Action model: camera + instruction + joint state.
        from vla_bringup.policy.vla.backend import VLAPolicy
        policy = VLAPolicy(checkpoint, horizon=horizon, dt=dt, device=device,
                           compile_mode=None if compile_mode == "none" else compile_mode)
        if compile_mode != "none":
            policy.warmup()  # compile now, not on the first real frame
        return policy
    if name in ("openvla", "lerobot") and not checkpoint:
        raise ValueError(f"policy {name} needs a local checkpoint folder (parameter checkpoint); "
                         "nothing is downloaded")
    if name == "openvla":
        # A user's OpenVLA-style transformers checkpoint (end-effector deltas -> Panda joints).
        from vla_bringup.policy.adapters.openvla import OpenVLAPolicy
        return OpenVLAPolicy(checkpoint, device=device, trust_remote_code=trust_remote_code)
    if name == "lerobot":
        # A user's LeRobot policy folder (ACT, SmolVLA, ...); needs `pip install lerobot`.
        from vla_bringup.policy.adapters.lerobot_policy import LeRobotPolicy
        return LeRobotPolicy(checkpoint, device=device, horizon=horizon)
    raise ValueError(f"unknown policy backend {name!r}; available: {list(POLICY_BACKENDS)}")
