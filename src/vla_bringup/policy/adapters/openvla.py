"""`OpenVLAPolicy`: an OpenVLA-style checkpoint from a local folder as a policy backend.

An OpenVLA-style model is a transformers vision-to-sequence (image-text-to-text) model that was
fine-tuned to answer a fixed prompt with `action_dim` tokens taken from the *last* `n_bins` ids of
its tokenizer's vocabulary, one token per action dimension (OpenVLA: 7 = end-effector xyz delta,
roll/pitch/yaw delta, gripper; 256 bins).

Loading (nothing is ever downloaded):
- `checkpoint` is a local folder with config.json, the processor / tokenizer files and
  *safetensors* weights (`use_safetensors=True`). A folder with only pickle weights (*.bin, *.pt)
  is refused: unpickling can run arbitrary code.
- `trust_remote_code` is False unless the caller sets it. Real OpenVLA checkpoints
  (openvla/openvla-7b and its fine-tunes) ship their own modelling code (model_type "openvla",
  `auto_map` in config.json) and need `trust_remote_code=True`; set it only for a folder whose
  Python files you have read. Their code was written for transformers 4.40 and is not guaranteed
  to run on the transformers this stack pins.
- Model class: `AutoModelForImageTextToText` (transformers 5 dropped `AutoModelForVision2Seq`); a
  remote-code folder whose `auto_map` names only `AutoModelForVision2Seq` (as OpenVLA's does) is
  loaded through that entry.

Inference, as OpenVLA's `predict_action`:
- prompt `"In: What action should the robot take to {instruction}?\\nOut:"` (the instruction
  lower-cased, as in OpenVLA's training data); for model_type "openvla" the Llama-2 "empty" token
  29871 is appended after "Out:" like `predict_action` does;
- greedy generation of `action_dim` new tokens;
- token -> bin: `index = vocab_size - 1 - token_id`, clipped to the `n_bins - 1` bin centres of
  `linspace(-1, 1, n_bins)` (so the last two token ids share the top centre, as in OpenVLA's
  ActionTokenizer); `vocab_size` is the tokenizer's base vocabulary (`tokenizer.vocab_size`, 32000
  for OpenVLA's Llama 2, not the padded embedding size). Unlike OpenVLA, a generated token outside
  the action range `[vocab_size - n_bins, vocab_size - 1]` is an error, not silently clipped;
- un-normalisation with the dataset's 1st / 99th percentiles:
  `a = 0.5 * (x + 1) * (q99 - q01) + q01` on the dimensions whose `mask` is true (default: all);
  masked-out dimensions (OpenVLA: the gripper) keep the bin value. The statistics come from
  `dataset_statistics.json` in the folder and / or `norm_stats` in the model config (the file wins
  on a shared key), picked by `unnorm_key` (may be left out when there is a single key).

Action space: OpenVLA predicts one end-effector *delta* per step; this stack commands absolute
joint positions. An `action_mapper` (any callable `(action (D,), joints (N,)) -> (H, N) or (N,)`
with a `joint_names` attribute) converts it; the default `PandaEndEffectorDeltaMapper` solves the
Panda's differential inverse kinematics (damped least squares on a numerical Jacobian of the
grasp-point forward kinematics of `vla_bringup.sim.kinematics`). The chunk holds that single row
with `dt = 1 / control_hz`: OpenVLA was trained on 5 Hz data (Bridge), so by default each
prediction is the target 0.2 s ahead; set `control_hz` to your dataset's rate.

Device: "auto" takes CUDA when present (`resolve_device` of the built-in backend); on CUDA the
model runs in bfloat16 (OpenVLA's training precision) unless `dtype` says otherwise. On CPU the
torch thread count defaults to 1, as for the built-in backend.
"""
from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from vla_bringup.core.robot import PANDA_JOINT_NAMES
from vla_bringup.policy.adapters import pickle_weight_files
from vla_bringup.policy.base import (ActionChunk, Observation, PolicyBackend, SkillSpec,
                                     joint_vector)
from vla_bringup.policy.vla.backend import resolve_device

OPENVLA_PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
OPENVLA_ACTION_DIM = 7
OPENVLA_N_BINS = 256
OPENVLA_CONTROL_HZ = 5.0
# OpenVLA's Llama-2 tokenizer: the "empty" token its training sequences have after "Out:".
LLAMA2_EMPTY_TOKEN = 29871
STATISTICS_FILE = "dataset_statistics.json"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

ActionMapper = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------- action tokens
def action_bin_centers(n_bins: int = OPENVLA_N_BINS) -> np.ndarray:
    """The `n_bins - 1` centres of the intervals between `n_bins` uniform edges over [-1, 1]."""
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    edges = np.linspace(-1.0, 1.0, int(n_bins))
    return (edges[:-1] + edges[1:]) / 2.0


def action_token_range(vocab_size: int, n_bins: int = OPENVLA_N_BINS) -> tuple[int, int]:
    """(first, last) token ids, inclusive, that encode actions: the last `n_bins` of the vocab."""
    if vocab_size < n_bins:
        raise ValueError(f"vocab_size {vocab_size} is smaller than n_bins {n_bins}")
    return int(vocab_size) - int(n_bins), int(vocab_size) - 1


def decode_action_tokens(token_ids: Sequence[int] | np.ndarray, vocab_size: int,
                         n_bins: int = OPENVLA_N_BINS, *, strict: bool = True) -> np.ndarray:
    """Normalised actions in [-1, 1] for action token ids (OpenVLA's convention).

    `strict` (default) raises ValueError, naming them, for ids outside `action_token_range`;
    `strict=False` clips them into the range like OpenVLA does.
    """
    ids = np.asarray(token_ids, dtype=np.int64)
    first, last = action_token_range(vocab_size, n_bins)
    outside = (ids < first) | (ids > last)
    if strict and np.any(outside):
        bad = [(int(i), int(t)) for i, t in enumerate(ids) if outside[i]]
        raise ValueError(
            f"generated tokens outside the action range [{first}, {last}] (vocab_size "
            f"{vocab_size}, {n_bins} bins) as (position, token id): {bad}; all tokens: "
            f"{ids.tolist()}. The checkpoint is not an action model of this vocabulary, or "
            "vocab_size / n_bins do not match its training")
    centers = action_bin_centers(n_bins)
    index = np.clip(int(vocab_size) - 1 - ids, 0, centers.shape[0] - 1)
    return centers[index]


def unnormalize_actions(normalized: np.ndarray, q01: Sequence[float], q99: Sequence[float],
                        mask: Optional[Sequence[bool]] = None) -> np.ndarray:
    """[-1, 1] -> [q01, q99] on the dimensions where `mask` is true (all when None)."""
    x = np.asarray(normalized, dtype=np.float64)
    low, high = np.asarray(q01, dtype=np.float64), np.asarray(q99, dtype=np.float64)
    keep = np.ones(low.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if not (x.shape[-1:] == low.shape == high.shape == keep.shape):
        raise ValueError(f"action dims differ: actions {x.shape}, q01 {low.shape}, "
                         f"q99 {high.shape}, mask {keep.shape}")
    return np.where(keep, 0.5 * (x + 1.0) * (high - low) + low, x)


def select_action_statistics(norm_stats: Mapping[str, Any], unnorm_key: Optional[str],
                             where: str = "the checkpoint") -> tuple[str, dict[str, np.ndarray]]:
    """(key, {"q01", "q99", "mask"}) of one dataset in OpenVLA's `norm_stats` layout.

    `norm_stats` maps dataset name -> {"action": {"q01": [...], "q99": [...], "mask": [...]}, ...}.
    """
    keys = sorted(norm_stats)
    if not keys:
        raise ValueError(f"{where} has no action statistics ({STATISTICS_FILE} or config "
                         "norm_stats): they are needed to un-normalise the actions")
    if unnorm_key is None:
        if len(keys) != 1:
            raise ValueError(f"{where} holds statistics of several datasets; pass unnorm_key, "
                             f"one of {keys}")
        unnorm_key = keys[0]
    if unnorm_key not in norm_stats:
        raise ValueError(f"unnorm_key {unnorm_key!r} is not in the statistics of {where}; "
                         f"available keys: {keys}")
    entry = norm_stats[unnorm_key]
    action = entry.get("action", entry) if isinstance(entry, Mapping) else None
    if not isinstance(action, Mapping) or "q01" not in action or "q99" not in action:
        raise ValueError(f"statistics {unnorm_key!r} of {where} lack action q01 / q99")
    q01 = np.asarray(action["q01"], dtype=np.float64)
    q99 = np.asarray(action["q99"], dtype=np.float64)
    mask = np.asarray(action.get("mask", np.ones(q01.shape, dtype=bool)), dtype=bool)
    if not (q01.ndim == 1 and q01.shape == q99.shape == mask.shape):
        raise ValueError(f"statistics {unnorm_key!r} of {where}: q01 {q01.shape}, q99 "
                         f"{q99.shape} and mask {mask.shape} must be equal-length vectors")
    if not (np.all(np.isfinite(q01)) and np.all(np.isfinite(q99))):
        raise ValueError(f"statistics {unnorm_key!r} of {where} hold NaN or inf")
    return unnorm_key, {"q01": q01, "q99": q99, "mask": mask}


def read_norm_stats(folder: Path, config_norm_stats: Optional[Mapping[str, Any]]) -> dict:
    """The config's `norm_stats` updated with the folder's dataset_statistics.json (if any)."""
    stats: dict = dict(config_norm_stats or {})
    path = Path(folder) / STATISTICS_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not readable JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of dataset name -> statistics")
        stats.update(data)
    return stats


# ---------------------------------------------------------------------------- checkpoint folder
def check_checkpoint_folder(folder: str | Path) -> Path:
    """The folder as a Path, or ValueError saying what is missing (nothing is downloaded)."""
    if not str(folder):
        raise ValueError("the openvla adapter needs checkpoint: a local folder (no hub download)")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"OpenVLA checkpoint folder {path} does not exist (a local folder "
                         "is required; nothing is downloaded)")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: not a transformers checkpoint folder")
    names = [p.name for p in path.iterdir() if p.is_file()]
    if not any(n.endswith(".safetensors") for n in names):
        pickles = pickle_weight_files(path)
        if pickles:
            raise ValueError(
                f"{path} holds only pickle weights {pickles}: refused, because unpickling can run "
                "arbitrary code. Convert them to safetensors where you trust them (load the "
                "model, then save_pretrained(..., safe_serialization=True))")
        raise ValueError(f"{path} has no model weights (*.safetensors)")
    if not {"preprocessor_config.json", "processor_config.json"} & set(names):
        raise ValueError(f"{path} has no preprocessor_config.json / processor_config.json: "
                         "the image processor is missing")
    if not {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} & set(names):
        raise ValueError(f"{path} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return path


def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder / 'config.json'}: not readable JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{folder / 'config.json'}: expected a JSON object")
    return config


def _needs_remote_code(config: Mapping[str, Any]) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    return bool(config.get("auto_map")) and config.get("model_type") not in CONFIG_MAPPING


def _remote_code_hint(folder: Path, config: Mapping[str, Any]) -> str:
    return (f"{folder} defines its own model code (model_type {config.get('model_type')!r}, "
            f"auto_map {sorted(config.get('auto_map') or {})}), which transformers runs only with "
            "trust_remote_code=True. Real OpenVLA checkpoints need it: pass "
            "trust_remote_code=True, and only for a folder whose Python files you have read")


# ---------------------------------------------------------------------------- quaternions
# (x, y, z, w), PyBullet's order.
def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz])


def _qconj(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def _qlog(q: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, |angle| <= pi) of a unit quaternion."""
    q = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    if q[3] < 0.0:
        q = -q
    s = np.linalg.norm(q[:3])
    if s < 1e-12:
        return 2.0 * q[:3]
    return 2.0 * math.atan2(s, q[3]) * q[:3] / s


def _qexp(rotvec: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        q = np.array([*(0.5 * np.asarray(rotvec)), 1.0])
        return q / np.linalg.norm(q)
    return np.array([*(np.asarray(rotvec) / angle * math.sin(angle / 2)), math.cos(angle / 2)])


def _qrotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _qmul(_qmul(q, np.array([*v, 0.0])), _qconj(q))[:3]


def quaternion_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """(x, y, z, w) of R = Rz(yaw) Ry(pitch) Rx(roll): rotations about fixed x, then y, then z."""
    def axis(i: int, angle: float) -> np.ndarray:
        q = np.array([0.0, 0.0, 0.0, math.cos(angle / 2)])
        q[i] = math.sin(angle / 2)
        return q
    return _qmul(axis(2, yaw), _qmul(axis(1, pitch), axis(0, roll)))


# ---------------------------------------------------------------------------- Panda action mapper
class PandaEndEffectorDeltaMapper:
    """OpenVLA's 7-D end-effector delta -> one row of absolute Panda joint targets (9 joints).

    `action = (dx, dy, dz, droll, dpitch, dyaw, gripper)`: translation in m and rotation
    (fixed-axis roll, pitch, yaw in rad, as OpenVLA's Bridge data) of the grasp point, expressed in
    the robot base frame (`frame="base"`, the usual convention of OpenVLA's datasets) or the world
    frame; the rotation is applied about the grasp point. They are scaled by
    `translation_scale` / `rotation_scale` and capped at `max_translation` m / `max_rotation` rad
    per step (a bad prediction cannot ask for a big jump). The arm joints follow from damped
    least squares, `dq = J^T (J J^T + damping^2 I)^-1 e`, with `J` the numerical 6x7 Jacobian of
    the grasp-point forward kinematics (`vla_bringup.sim.kinematics.PandaKinematics.fk`, the
    simulator's own model), repeated up to `iterations` times. Joint limits are not applied here:
    the safety node clamps every command to them.

    Gripper: OpenVLA's convention is 1 = open, 0 = closed. With `gripper_threshold` (default
    0.5) the fingers are fully open (0.04 m) above it and closed (0 m) otherwise; with None the
    opening is proportional, `0.04 * clip(g, 0, 1)`.
    """

    joint_names = PANDA_JOINT_NAMES

    def __init__(self, *, frame: str = "base", translation_scale: float = 1.0,
                 rotation_scale: float = 1.0, max_translation: float = 0.05,
                 max_rotation: float = 0.3, damping: float = 0.02, iterations: int = 4,
                 gripper_threshold: Optional[float] = 0.5, kinematics: Any = None) -> None:
        from vla_bringup.sim.kinematics import (
            FINGER_CLOSED, FINGER_OPEN, PANDA_BASE_ORIENTATION, PandaKinematics)
        if frame not in ("base", "world"):
            raise ValueError(f"frame must be base or world, got {frame!r}")
        if max_translation <= 0 or max_rotation <= 0 or damping < 0 or iterations < 1:
            raise ValueError("max_translation and max_rotation must be > 0, damping >= 0, "
                             "iterations >= 1")
        self.frame = frame
        self.translation_scale = float(translation_scale)
        self.rotation_scale = float(rotation_scale)
        self.max_translation = float(max_translation)
        self.max_rotation = float(max_rotation)
        self.damping = float(damping)
        self.iterations = int(iterations)
        self.gripper_threshold = gripper_threshold
        self.finger_open, self.finger_closed = FINGER_OPEN, FINGER_CLOSED
        self._base = (np.asarray(PANDA_BASE_ORIENTATION, dtype=np.float64) if frame == "base"
                      else np.array([0.0, 0.0, 0.0, 1.0]))
        self._own_kinematics = kinematics is None
        self.kinematics = PandaKinematics() if kinematics is None else kinematics

    def fk(self, q7: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        position, quaternion = self.kinematics.fk(q7)
        return np.asarray(position, dtype=np.float64), np.asarray(quaternion, dtype=np.float64)

    def jacobian(self, q7: np.ndarray, eps: float = 1e-6) -> np.ndarray:
        """6x7: d(position, rotation vector)/dq in the world frame, by forward differences."""
        q7 = np.asarray(q7, dtype=np.float64)
        position, quaternion = self.fk(q7)
        jac = np.zeros((6, 7))
        for i in range(7):
            shifted = q7.copy()
            shifted[i] += eps
            p, q = self.fk(shifted)
            jac[:3, i] = (p - position) / eps
            jac[3:, i] = _qlog(_qmul(q, _qconj(quaternion))) / eps
        return jac

    def target_pose(self, action: np.ndarray, q7: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World position and quaternion of the grasp point after the (capped) delta."""
        position, quaternion = self.fk(q7)
        delta = np.asarray(action[:3], dtype=np.float64) * self.translation_scale
        norm = float(np.linalg.norm(delta))
        if norm > self.max_translation:
            delta *= self.max_translation / norm
        rotvec = _qlog(quaternion_from_rpy(*(np.asarray(action[3:6], dtype=np.float64)
                                             * self.rotation_scale)))
        angle = float(np.linalg.norm(rotvec))
        if angle > self.max_rotation:
            rotvec *= self.max_rotation / angle
        rotation = _qmul(_qmul(self._base, _qexp(rotvec)), _qconj(self._base))  # in world
        return position + _qrotate(self._base, delta), _qmul(rotation, quaternion)

    def solve(self, target_position: np.ndarray, target_quaternion: np.ndarray,
              q7: np.ndarray) -> np.ndarray:
        """Arm joints near `q7` putting the grasp point at the target (damped least squares)."""
        q = np.asarray(q7, dtype=np.float64).copy()
        for _ in range(self.iterations):
            position, quaternion = self.fk(q)
            error = np.concatenate([target_position - position,
                                    _qlog(_qmul(target_quaternion, _qconj(quaternion)))])
            if np.linalg.norm(error[:3]) < 1e-5 and np.linalg.norm(error[3:]) < 1e-4:
                break
            jac = self.jacobian(q)
            damped = jac @ jac.T + self.damping ** 2 * np.eye(6)
            q = q + jac.T @ np.linalg.solve(damped, error)
        return q

    def gripper(self, value: float) -> float:
        if self.gripper_threshold is None:
            return self.finger_open * float(np.clip(value, 0.0, 1.0))
        return self.finger_open if value > self.gripper_threshold else self.finger_closed

    def __call__(self, action: np.ndarray, joints: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        joints = np.asarray(joints, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(f"the Panda mapper takes a 7-D action (xyz, rpy, gripper), "
                             f"got shape {action.shape}")
        if joints.shape != (len(self.joint_names),):
            raise ValueError(f"expected {len(self.joint_names)} joint positions, "
                             f"got {joints.shape}")
        target = self.target_pose(action, joints[:7])
        arm = self.solve(*target, joints[:7])
        finger = self.gripper(action[6])
        return np.concatenate([arm, [finger, finger]])[None, :]

    def close(self) -> None:
        if self._own_kinematics and self.kinematics is not None:
            self.kinematics.close()
            self.kinematics = None


# ---------------------------------------------------------------------------- the backend
class OpenVLAPolicy(PolicyBackend):
    """An OpenVLA-style checkpoint folder as a `PolicyBackend` (see the module docstring)."""

    name = "openvla"
    requires_ground_truth = False
    requires_image = True

    def __init__(self, checkpoint: str | Path, *, unnorm_key: Optional[str] = None,
                 action_mapper: Optional[ActionMapper] = None,
                 joint_names: Optional[Sequence[str]] = None,
                 prompt_template: str = OPENVLA_PROMPT,
                 action_dim: int = OPENVLA_ACTION_DIM, n_bins: Optional[int] = None,
                 vocab_size: Optional[int] = None,
                 prompt_suffix_ids: Optional[Sequence[int]] = None,
                 control_hz: float = OPENVLA_CONTROL_HZ, device: str = "auto",
                 dtype: Optional[str] = None, trust_remote_code: bool = False,
                 num_threads: Optional[int] = 1) -> None:
        if "{instruction}" not in prompt_template:
            raise ValueError("prompt_template must contain {instruction}")
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        if not (control_hz > 0 and math.isfinite(control_hz)):
            raise ValueError(f"control_hz must be > 0, got {control_hz}")
        self.device = resolve_device(device)
        if self.device.type == "cpu" and num_threads:
            torch.set_num_threads(int(num_threads))
        dtype = dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if dtype != "float32" and self.device.type != "cuda":
            raise ValueError(f"{dtype} is for CUDA only; use float32 on the CPU")
        self.dtype = _DTYPES[dtype]
        self.trust_remote_code = bool(trust_remote_code)
        self.folder = check_checkpoint_folder(checkpoint)
        self.model, self.processor = self._load(self.folder)
        config = self.model.config

        stats = read_norm_stats(self.folder, getattr(config, "norm_stats", None))
        self.unnorm_key, self.statistics = select_action_statistics(stats, unnorm_key,
                                                                    str(self.folder))
        if self.statistics["q01"].shape[0] != action_dim:
            raise ValueError(f"statistics {self.unnorm_key!r} have "
                             f"{self.statistics['q01'].shape[0]} action dims, action_dim is "
                             f"{action_dim}")
        self.action_dim = int(action_dim)
        self.n_bins = int(n_bins or getattr(config, "n_action_bins", None) or OPENVLA_N_BINS)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size if vocab_size is not None else tokenizer.vocab_size)
        self.action_tokens = action_token_range(self.vocab_size, self.n_bins)
        output_size = self.model.get_output_embeddings().weight.shape[0]
        if self.vocab_size > output_size:
            raise ValueError(f"vocab_size {self.vocab_size} exceeds the model's {output_size} "
                             "output tokens")
        if prompt_suffix_ids is None:  # what OpenVLA's predict_action appends after "Out:"
            prompt_suffix_ids = ([LLAMA2_EMPTY_TOKEN] if getattr(config, "model_type", "")
                                 == "openvla" else [])
        self.prompt_suffix_ids = [int(t) for t in prompt_suffix_ids]
        self.prompt_template = prompt_template
        self.control_hz = float(control_hz)
        self.dt = 1.0 / self.control_hz

        self.action_mapper = action_mapper if action_mapper is not None else (
            PandaEndEffectorDeltaMapper())
        names = joint_names if joint_names is not None else getattr(
            self.action_mapper, "joint_names", None)
        if not names:
            raise ValueError("pass joint_names, or an action_mapper with a joint_names attribute")
        self.joint_names = tuple(names)
        self.pad_token_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) \
            is not None else getattr(tokenizer, "eos_token_id", None)
        forward = inspect.signature(self.model.forward).parameters
        self._drop_inputs = {k for k in ("token_type_ids",) if k not in forward}
        self.last_tokens: Optional[np.ndarray] = None
        self.last_action: Optional[np.ndarray] = None

    # ------------------------------------------------------------------ loading
    def _load(self, folder: Path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        import transformers
        config = _read_config(folder)
        if _needs_remote_code(config) and not self.trust_remote_code:
            raise ValueError(_remote_code_hint(folder, config))
        common = dict(local_files_only=True, trust_remote_code=self.trust_remote_code)
        auto_map = config.get("auto_map") or {}
        try:
            processor = transformers.AutoProcessor.from_pretrained(str(folder), **common)
            if (self.trust_remote_code and "AutoModelForImageTextToText" not in auto_map
                    and "AutoModelForVision2Seq" in auto_map):
                # OpenVLA's config maps only the Vision2Seq auto class (gone in transformers 5).
                from transformers.dynamic_module_utils import get_class_from_dynamic_module
                model_class = get_class_from_dynamic_module(
                    auto_map["AutoModelForVision2Seq"], str(folder), local_files_only=True)
            else:
                model_class = (getattr(transformers, "AutoModelForImageTextToText", None)
                               or getattr(transformers, "AutoModelForVision2Seq"))
            model = model_class.from_pretrained(str(folder), use_safetensors=True,
                                                dtype=self.dtype, **common)
        except Exception as exc:  # transformers, safetensors, remote code: many error types
            hint = ("; " + _remote_code_hint(folder, config)) if (
                "trust_remote_code" in str(exc) or (auto_map and not self.trust_remote_code)) \
                else ""
            raise ValueError(f"could not load an image-text-to-text model and processor from "
                             f"{folder}: {exc}{hint}") from exc
        return model.to(self.device).eval(), processor

    # ------------------------------------------------------------------ contract
    def reset(self, skill: Optional[SkillSpec]) -> None:
        # OpenVLA is stateless: every step is predicted from the current frame alone.
        self.last_tokens = self.last_action = None

    def infer(self, observation: Observation) -> ActionChunk:
        if observation.image is None:
            raise ValueError("the openvla backend needs the camera image in the observation")
        image = observation.image
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
                and image.dtype == np.uint8):
            raise ValueError("image must be an HxWx3 uint8 numpy array, got "
                             f"{getattr(image, 'shape', type(image).__name__)} "
                             f"{getattr(image, 'dtype', '')}")
        joints = joint_vector(observation, self.joint_names)
        tokens = self.generate_action_tokens(image, observation.skill.instruction)
        action = self.decode(tokens)
        rows = np.asarray(self.action_mapper(action, joints), dtype=np.float64)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != len(self.joint_names):
            raise ValueError(f"action_mapper returned shape {rows.shape}, expected "
                             f"(H, {len(self.joint_names)}) for {list(self.joint_names)}")
        self.last_tokens, self.last_action = tokens, action
        return ActionChunk(list(self.joint_names), rows, self.dt)

    # ------------------------------------------------------------------ steps
    def prompt(self, instruction: str) -> str:
        text = self.prompt_template.format(instruction=instruction.strip().lower())
        image_token = getattr(self.processor, "image_token", None)
        if isinstance(image_token, str) and image_token and image_token not in text:
            text = image_token + text  # processors like Llava's place the image at its token
        return text

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Generated token ids -> un-normalised action (action_dim,)."""
        normalized = decode_action_tokens(tokens, self.vocab_size, self.n_bins, strict=True)
        return unnormalize_actions(normalized, self.statistics["q01"], self.statistics["q99"],
                                   self.statistics["mask"])

    def generate_action_tokens(self, image: np.ndarray, instruction: str) -> np.ndarray:
        from PIL import Image
        inputs = self.processor(text=self.prompt(instruction),
                                images=Image.fromarray(np.ascontiguousarray(image)),
                                return_tensors="pt")
        inputs = {k: v for k, v in inputs.items() if k not in self._drop_inputs}
        if self.prompt_suffix_ids:
            ids = inputs["input_ids"]
            if ids[0, -len(self.prompt_suffix_ids):].tolist() != self.prompt_suffix_ids:
                suffix = torch.tensor([self.prompt_suffix_ids], dtype=ids.dtype)
                inputs["input_ids"] = torch.cat([ids, suffix], dim=1)
                if "attention_mask" in inputs:
                    mask = inputs["attention_mask"]
                    inputs["attention_mask"] = torch.cat(
                        [mask, torch.ones_like(suffix, dtype=mask.dtype)], dim=1)
        inputs = {k: (v.to(self.device, self.dtype) if torch.is_floating_point(v)
                      else v.to(self.device)) if isinstance(v, torch.Tensor) else v
                  for k, v in inputs.items()}
        prompt_length = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.action_dim,
                                            do_sample=False, pad_token_id=self.pad_token_id)
        tokens = generated[0, prompt_length:].cpu().numpy().astype(np.int64)
        if tokens.shape[0] != self.action_dim:
            raise ValueError(f"the model generated {tokens.shape[0]} tokens {tokens.tolist()}, "
                             f"expected {self.action_dim} action tokens (it stopped early)")
        return tokens

    def close(self) -> None:
        closer = getattr(self.action_mapper, "close", None)
        if callable(closer):
            closer()


__all__ = ["OpenVLAPolicy", "PandaEndEffectorDeltaMapper", "OPENVLA_PROMPT", "action_bin_centers",
           "action_token_range", "decode_action_tokens", "unnormalize_actions",
           "select_action_statistics", "read_norm_stats", "check_checkpoint_folder",
           "quaternion_from_rpy"]
