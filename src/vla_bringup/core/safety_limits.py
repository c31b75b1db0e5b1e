"""Robot limits for the safety gate, loaded from a plain YAML file (config/robots/*.yaml).

Everything is validated on load, with messages that name the file entry at fault: a typo in a
limits file must stop the safety node at start-up, not surface as a robot that ignores a limit.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import yaml

_JOINT_KEYS = ("lower", "upper", "max_velocity", "max_acceleration", "max_effort")
_ARM_TOP_KEYS = {"robot", "joints", "position_margin", "workspace", "base"}
_BASE_KEYS = ("max_linear_velocity", "max_angular_velocity",
              "max_linear_acceleration", "max_angular_acceleration")


def _number(value: Any, where: str) -> float:
    # bool is an int subclass; `max_velocity: true` is a typo, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where} must be finite, got {value}")
    return value


def _positive(value: Any, where: str) -> float:
    value = _number(value, where)
    if value <= 0.0:
        raise ValueError(f"{where} must be > 0, got {value}")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _no_unknown_keys(entry: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(entry) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")


@dataclasses.dataclass(frozen=True)
class JointLimit:
    name: str
    lower: float  # rad or m
    upper: float
    max_velocity: float  # rad/s or m/s
    max_acceleration: float  # rad/s^2 or m/s^2
    max_effort: float  # Nm or N
    margin: float  # rad or m kept from both ends of [lower, upper]

    def __post_init__(self) -> None:
        where = f"joint {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"joint names must be non-empty strings, got {self.name!r}")
        for key in _JOINT_KEYS + ("margin",):
            _number(getattr(self, key), f"{where}: {key}")
        if not self.lower < self.upper:
            raise ValueError(f"{where}: lower ({self.lower}) must be < upper ({self.upper})")
        for key in ("max_velocity", "max_acceleration", "max_effort"):
            _positive(getattr(self, key), f"{where}: {key}")
        if self.margin < 0.0:
            raise ValueError(f"{where}: margin must be >= 0, got {self.margin}")
        if self.lower + self.margin >= self.upper - self.margin:
            raise ValueError(
                f"{where}: margin {self.margin} leaves no room in [{self.lower}, {self.upper}]"
                " (a prismatic joint needs its own `margin`, in m)")

    @classmethod
    def from_dict(cls, name: str, entry: Any, default_margin: float) -> "JointLimit":
        entry = _mapping(entry, f"joint {name!r}")
        _no_unknown_keys(entry, _JOINT_KEYS + ("margin",), f"joint {name!r}")
        missing = [k for k in _JOINT_KEYS if k not in entry]
        if missing:
            raise ValueError(f"joint {name!r}: missing keys {missing}")
        values = {k: _number(entry[k], f"joint {name!r}: {k}") for k in _JOINT_KEYS}
        margin = _number(entry.get("margin", default_margin), f"joint {name!r}: margin")
        return cls(name=name, margin=margin, **values)


@dataclasses.dataclass(frozen=True)
class WorkspaceBox:
    """Axis-aligned box, m, world frame."""

    lower: tuple[float, float, float]
    upper: tuple[float, float, float]

    def __post_init__(self) -> None:
        for axis, lo, hi in zip("xyz", self.lower, self.upper):
            if not lo < hi:
                raise ValueError(f"workspace {axis}: lower ({lo}) must be < upper ({hi})")

    def contains(self, point: Sequence[float]) -> bool:
        point = np.asarray(point, dtype=np.float64)
        return point.shape == (3,) and bool(np.all(np.isfinite(point))) and bool(
            np.all(point >= self.lower) and np.all(point <= self.upper))

    @classmethod
    def from_dict(cls, entry: Any) -> "WorkspaceBox":
        entry = _mapping(entry, "workspace")
        _no_unknown_keys(entry, ("x", "y", "z"), "workspace")
        lower, upper = [], []
        for axis in "xyz":
            pair = entry.get(axis)
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"workspace {axis} must be [min, max] in m, got {pair!r}")
            lower.append(_number(pair[0], f"workspace {axis} min"))
            upper.append(_number(pair[1], f"workspace {axis} max"))
        return cls(tuple(lower), tuple(upper))


@dataclasses.dataclass(frozen=True)
class ArmLimits:
    """Joint limits in a fixed joint order; the arrays are indexed like `names`."""

    joints: tuple[JointLimit, ...]
    workspace: Optional[WorkspaceBox] = None

    def __post_init__(self) -> None:
        if not self.joints:
            raise ValueError("at least one joint is needed")
        names = [j.name for j in self.joints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate joint names {duplicates}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    def _array(self, key: str) -> np.ndarray:
        array = np.array([getattr(j, key) for j in self.joints], dtype=np.float64)
        array.flags.writeable = False
        return array

    # Arrays are rebuilt per access; the gate reads them once at construction.
    lower = property(lambda self: self._array("lower"))
    upper = property(lambda self: self._array("upper"))
    max_velocity = property(lambda self: self._array("max_velocity"))
    max_acceleration = property(lambda self: self._array("max_acceleration"))
    max_effort = property(lambda self: self._array("max_effort"))
    margin = property(lambda self: self._array("margin"))

    @property
    def safe_lower(self) -> np.ndarray:
        return self.lower + self.margin

    @property
    def safe_upper(self) -> np.ndarray:
        return self.upper - self.margin

    @classmethod
    def from_dict(cls, data: Any) -> "ArmLimits":
        data = _mapping(data, "limits file")
        _no_unknown_keys(data, sorted(_ARM_TOP_KEYS), "limits file")
        joints = _mapping(data.get("joints"), "joints")
        if not joints:
            raise ValueError("joints must name at least one joint")
        margin = _number(data.get("position_margin", 0.0), "position_margin")
        limits = tuple(JointLimit.from_dict(str(name), entry, margin)
                       for name, entry in joints.items())
        workspace = data.get("workspace")
        return cls(limits, None if workspace is None else WorkspaceBox.from_dict(workspace))


@dataclasses.dataclass(frozen=True)
class BaseLimits:
    max_linear_velocity: float  # m/s, norm of (vx, vy)
    max_angular_velocity: float  # rad/s
    max_linear_acceleration: float  # m/s^2, norm of the change of (vx, vy)
    max_angular_acceleration: float  # rad/s^2
    holonomic: bool = False  # False: a differential drive, vy is always 0

    def __post_init__(self) -> None:
        for key in _BASE_KEYS:
            _positive(getattr(self, key), f"base: {key}")
        if not isinstance(self.holonomic, bool):
            raise ValueError(f"base: holonomic must be true or false, got {self.holonomic!r}")

    @classmethod
    def from_dict(cls, data: Any) -> "BaseLimits":
        """Accepts the `base:` section itself or a whole limits file that holds one."""
        data = _mapping(data, "base limits")
        if "base" in data:
            data = _mapping(data["base"], "base")
        elif "joints" in data:
            raise ValueError("limits file has no `base:` section")
        _no_unknown_keys(data, _BASE_KEYS + ("holonomic",), "base")
        missing = [k for k in _BASE_KEYS if k not in data]
        if missing:
            raise ValueError(f"base: missing keys {missing}")
        return cls(**{k: _number(data[k], f"base: {k}") for k in _BASE_KEYS},
                   holonomic=data.get("holonomic", False))


def load_limits_file(path: Union[str, Path]) -> dict:
    """The parsed YAML mapping of a limits file (feed it to ArmLimits / BaseLimits.from_dict)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
