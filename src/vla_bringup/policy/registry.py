"""Policy backends by name: what `policy:=<backend>` selects."""
from __future__ import annotations

from vla_bringup.core.params import POLICY_BACKENDS
from vla_bringup.policy.base import PolicyBackend


def make_backend(name: str, *, horizon: int, dt: float, device: str = "auto",
                 checkpoint: str = "") -> PolicyBackend:
    if name == "scripted_expert":
        # Privileged: reads the simulator's ground truth; a baseline and data source, not a VLA.
        from vla_bringup.policy.scripted_expert import ScriptedExpert
        return ScriptedExpert(horizon=horizon, dt=dt)
    raise ValueError(f"unknown policy backend {name!r}; available: {list(POLICY_BACKENDS)}")
