"""`LeRobotPolicy`: a LeRobot policy (ACT; SmolVLA and others of its API) from a local folder.

LeRobot (https://github.com/huggingface/lerobot) saves a trained policy as a folder with
`config.json` (the policy type, its `input_features` / `output_features` and hyper-parameters)
and `model.safetensors`; lerobot >= 0.4 adds `policy_preprocessor.json` /
`policy_postprocessor.json` (+ their `*.safetensors` state) that hold the normalisation
statistics, which lerobot < 0.4 keeps as buffers inside `model.safetensors`. This backend needs
the `lerobot` package (`pip install lerobot`, imported lazily, never a dependency of the stack).

Loading (nothing is ever downloaded):
- `checkpoint` must be a local folder holding `config.json` and `model.safetensors` (a training
  run's `checkpoints/<step>/` folder works too: its `pretrained_model/` is used). Hub ids are
  refused; pickle weights are never read (LeRobot saves safetensors only).
- The config is read with `PreTrainedConfig.from_pretrained` and the class named by its `type`
  is built by `get_policy_class(type).from_pretrained(folder, config=config, strict=True)`.
  Before that, `pretrained_backbone_weights` (ACT's ImageNet ResNet) is set to None: the
  backbone weights are in `model.safetensors`, and torchvision would otherwise try to download
  them. `strict=True` (lerobot's default is False) makes a checkpoint that does not match its
  config an error instead of a silently random layer.
- The folder format must match the installed lerobot: a folder with processor files needs
  lerobot >= 0.4; a folder without them needs lerobot < 0.4 (migrate it with lerobot's
  `lerobot.processor.migrate_policy_normalization` otherwise). A legacy folder whose
  normalisation buffers are missing (still infinite after loading) is refused at load time.
- SmolVLA builds its VLM backbone and tokenizer from `vlm_model_name` (a hub id by default):
  pass `vlm_path`, a local folder holding that model's config / processor / tokenizer files, or
  run with `HF_HUB_OFFLINE=1` and the model already in the Hugging Face cache.

Observation -> LeRobot batch (batch size 1):
- the camera image (HxWx3 uint8 RGB) -> `image_key` as float (1, 3, H, W) in [0, 1], resized
  (bilinear, antialiased, aspect ratio not kept) to the (H, W) of that feature in the config
  unless `resize=False`. `image_key` defaults to the policy's only VISUAL feature; a policy
  with several cameras needs `image_key` and, for the others, `allow_missing_cameras=True`
  (only for policies that tolerate absent cameras, such as SmolVLA; ACT does not);
- the 9 Panda joints -> the STATE feature (`observation.state`), laid out by `state_layout`;
- `task` = the skill's instruction (language-conditioned policies read it; ACT ignores it).
Policies that need `observation.environment_state` (privileged simulator state) are refused.

Actions: `predict_action_chunk` gives (chunk_size, D) *absolute* targets in the dataset's units
(lerobot's policies predict absolute joint positions), de-normalised by the policy (< 0.4) or
by the post-processor (>= 0.4). `action_layout` maps a row onto the 9 Panda joints:
- "arm_gripper" (D = 8): 7 arm joint positions (rad) + the gripper opening, applied to both
  fingers (as the built-in VLA does);
- "joints" (D = 9): the 9 Panda joints in `PANDA_JOINT_NAMES` order.
None picks the layout from D. Gripper values are divided by `gripper_scale` (policy units per
metre of finger travel; 1.0 = metres, 25.0 for a 0..1 gripper) and clipped to 0..0.04 m; the
state gets the mean finger position times `gripper_scale` ("arm_gripper") or each finger times
it ("joints"). The chunk keeps the first `horizon` rows (default: the config's `n_action_steps`,
what lerobot itself executes per inference) with `dt = 1 / control_hz`; set `control_hz` to the
fps of the dataset the policy was trained on (LeRobot's recordings default to 30).

LeRobot policies do not report skill completion: chunks carry `skill_done=False` and
`progress=0`, so a skill driven by this backend ends by the skill executor's timeout unless
something else ends it. ACT's temporal ensembling (`temporal_ensemble_coeff`) is not used: the
whole chunk goes to the stack's chunk scheduler.

Device: "auto" takes CUDA when present (`resolve_device` of the built-in backend); the model
runs in its own precision. On CPU the torch thread count defaults to 1, as for the other
backends.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from vla_bringup.core.robot import PANDA_ARM_JOINTS, PANDA_JOINT_NAMES
from vla_bringup.policy.adapters import pickle_weight_files
from vla_bringup.policy.base import (ActionChunk, Observation, PolicyBackend, SkillSpec,
                                     joint_vector)
from vla_bringup.policy.vla.backend import resolve_device

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"

ARM_DOF = len(PANDA_ARM_JOINTS)
FINGER_MAX = 0.04  # m, Panda finger travel
LAYOUTS = {"arm_gripper": ARM_DOF + 1, "joints": len(PANDA_JOINT_NAMES)}
DEFAULT_CONTROL_HZ = 30.0  # LeRobot's default recording fps

INSTALL_HINT = (
    "the lerobot backend needs the `lerobot` package, which this stack does not install: "
    "pip install lerobot  (in the environment that runs the policy node; note that lerobot "
    "0.3.3 .. 0.4.4 require torch < 2.11 and pip falls back to lerobot 0.3.2 next to a newer "
    "torch)")

# The torchvision wheel on PyPI is built against PyPI's (CUDA) torch; next to a "+cpu" torch its
# operators fail to load ("operator torchvision::nms does not exist").
TORCHVISION_HINT = (
    f"torchvision does not match this torch build ({torch.__version__}): a +cpu torch needs the "
    "torchvision +cpu wheel of the same release (https://download.pytorch.org/whl/cpu), a PyPI "
    "torch the PyPI torchvision")


# ---------------------------------------------------------------------------- lerobot import
def import_lerobot() -> Any:
    """The lerobot modules this adapter uses, imported now; a clear ImportError if absent."""
    try:
        import lerobot  # noqa: F401
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies import factory  # imports torchvision
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    except (RuntimeError, OSError) as error:
        raise_torchvision_mismatch(error)
        raise
    return PreTrainedConfig, factory


def raise_torchvision_mismatch(error: BaseException) -> None:
    """Re-raise a torchvision load failure with what to install instead; else return."""
    text = str(error)
    if "torchvision" in text or "c10_cuda" in text or "torch_cuda" in text:
        raise RuntimeError(f"{TORCHVISION_HINT} ({text})") from error


def lerobot_version() -> str:
    try:
        from importlib.metadata import version
        return version("lerobot")
    except Exception:  # noqa: BLE001 - any metadata trouble: unknown
        return "unknown"


# ---------------------------------------------------------------------------- checkpoint folder
@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What `config.json` says about a LeRobot policy folder (read as plain JSON)."""

    folder: Path
    policy_type: str
    image_features: dict[str, tuple[int, ...]]  # key -> (C, H, W), config order
    state_key: Optional[str]
    state_dim: Optional[int]
    env_state_key: Optional[str]
    action_key: str
    action_dim: int
    chunk_size: Optional[int]
    n_action_steps: Optional[int]
    has_processors: bool  # saved by lerobot >= 0.4
    vlm_model_name: Optional[str]


def _feature_shape(key: str, spec: Any) -> tuple[str, tuple[int, ...]]:
    if not isinstance(spec, Mapping) or "type" not in spec or "shape" not in spec:
        raise ValueError(f"feature {key!r} in {CONFIG_FILE} lacks type / shape")
    try:
        shape = tuple(int(v) for v in spec["shape"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"feature {key!r} has a bad shape {spec['shape']!r}") from error
    return str(spec["type"]).upper(), shape


def check_checkpoint_folder(checkpoint: str | os.PathLike) -> Path:
    """The folder holding config.json + model.safetensors, or a clear error."""
    if not str(checkpoint):
        raise ValueError("the lerobot backend needs checkpoint:=<local folder of a LeRobot "
                         "policy (config.json + model.safetensors)>")
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"LeRobot checkpoint {str(checkpoint)!r} is not a local folder (hub ids are not "
            "downloaded: fetch the policy folder first and pass its path)")
    nested = folder / "pretrained_model"  # a training run's checkpoints/<step>/ folder
    if not (folder / CONFIG_FILE).is_file() and (nested / CONFIG_FILE).is_file():
        folder = nested
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE}: not a LeRobot policy folder")
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = pickle_weight_files(folder)
        extra = (f"; {pickles} are pickle files, which this backend never loads (unpickling can "
                 "run arbitrary code)") if pickles else ""
        raise FileNotFoundError(f"{folder} holds no {WEIGHTS_FILE}{extra}")
    return folder


def read_checkpoint_info(checkpoint: str | os.PathLike) -> CheckpointInfo:
    """Parse a LeRobot policy folder's config.json without importing lerobot."""
    folder = check_checkpoint_folder(checkpoint)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON: {error}") from error
    if not isinstance(config, Mapping) or not isinstance(config.get("type"), str):
        raise ValueError(f"{folder / CONFIG_FILE} names no policy `type`: not a LeRobot policy "
                         "config")
    inputs = config.get("input_features") or {}
    outputs = config.get("output_features") or {}
    if not isinstance(inputs, Mapping) or not isinstance(outputs, Mapping):
        raise ValueError("input_features / output_features must be JSON objects")
    images: dict[str, tuple[int, ...]] = {}
    state_key = state_dim = env_key = None
    for key, spec in inputs.items():
        kind, shape = _feature_shape(key, spec)
        if kind == "VISUAL":
            if len(shape) != 3 or shape[0] != 3:
                raise ValueError(f"image feature {key!r} must be (3, H, W), got {shape}")
            images[key] = shape
        elif kind == "STATE":
            if state_key is not None:
                raise ValueError(f"two STATE features: {state_key!r} and {key!r}")
            if len(shape) != 1:
                raise ValueError(f"state feature {key!r} must be 1-D, got {shape}")
            state_key, state_dim = key, shape[0]
        elif kind == "ENV":
            env_key = key
    actions = [(key, _feature_shape(key, spec)) for key, spec in outputs.items()]
    actions = [(key, shape) for key, (kind, shape) in actions if kind == "ACTION"]
    if len(actions) != 1 or len(actions[0][1]) != 1:
        raise ValueError(f"{CONFIG_FILE} must have one 1-D ACTION output feature, got "
                         f"{outputs!r}")

    def integer(name: str) -> Optional[int]:
        value = config.get(name)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else None

    vlm = config.get("vlm_model_name")
    return CheckpointInfo(
        folder=folder, policy_type=config["type"], image_features=images, state_key=state_key,
        state_dim=state_dim, env_state_key=env_key, action_key=actions[0][0],
        action_dim=actions[0][1][0], chunk_size=integer("chunk_size"),
        n_action_steps=integer("n_action_steps"),
        has_processors=(folder / PREPROCESSOR_FILE).is_file()
        and (folder / POSTPROCESSOR_FILE).is_file(),
        vlm_model_name=vlm if isinstance(vlm, str) else None)


# ---------------------------------------------------------------------------- joint mapping
def resolve_layout(layout: Optional[str], dim: int, what: str) -> str:
    """The layout for a `dim`-long vector: the given one (checked) or the one dim implies."""
    if layout is None:
        for name, size in LAYOUTS.items():
            if size == dim:
                return name
        raise ValueError(
            f"the policy's {what} has {dim} dimensions; this adapter maps 8 (7 Panda arm joints "
            f"+ gripper opening, layout 'arm_gripper') or 9 (all Panda joints, 'joints')")
    if layout not in LAYOUTS:
        raise ValueError(f"{what} layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if LAYOUTS[layout] != dim:
        raise ValueError(f"{what} layout {layout!r} is {LAYOUTS[layout]}-D but the policy's "
                         f"{what} has {dim} dimensions")
    return layout


def joints_to_state(joints: np.ndarray, layout: str, gripper_scale: float = 1.0) -> np.ndarray:
    """(9,) Panda joints -> the policy's state vector of `layout`."""
    q = np.asarray(joints, dtype=np.float64)
    if q.shape != (len(PANDA_JOINT_NAMES),):
        raise ValueError(f"joints must be ({len(PANDA_JOINT_NAMES)},), got {q.shape}")
    if layout == "arm_gripper":
        return np.concatenate([q[:ARM_DOF], [q[ARM_DOF:].mean() * gripper_scale]])
    if layout == "joints":
        return np.concatenate([q[:ARM_DOF], q[ARM_DOF:] * gripper_scale])
    raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")


def actions_to_joints(actions: np.ndarray, layout: str, gripper_scale: float = 1.0) -> np.ndarray:
    """(H, D) policy actions of `layout` -> (H, 9) absolute Panda joint targets."""
    a = np.asarray(actions, dtype=np.float64)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if a.ndim != 2 or a.shape[1] != LAYOUTS[layout]:
        raise ValueError(f"layout {layout!r} needs (H, {LAYOUTS[layout]}) actions, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("the policy returned NaN or inf actions")
    arm = a[:, :ARM_DOF]
    if layout == "arm_gripper":
        fingers = np.repeat(a[:, ARM_DOF:], 2, axis=1)
    else:
        fingers = a[:, ARM_DOF:]
    fingers = np.clip(fingers / gripper_scale, 0.0, FINGER_MAX)
    return np.concatenate([arm, fingers], axis=1)


def image_to_tensor(image: Any, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """HxWx3 uint8 RGB -> (1, 3, H', W') float32 in [0, 1], resized to `size` = (H', W')."""
    if image is None:
        raise ValueError("the lerobot backend needs the camera image in the observation")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8, got {array.shape} {array.dtype}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"image must not be empty, got {array.shape}")
    pixels = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0)
    pixels = pixels.to(torch.float32).div_(255.0)
    if size is not None and tuple(pixels.shape[-2:]) != tuple(size):
        pixels = torch.nn.functional.interpolate(pixels, size=tuple(size), mode="bilinear",
                                                 align_corners=False, antialias=True)
        pixels = pixels.clamp_(0.0, 1.0)
    return pixels


# ---------------------------------------------------------------------------- the backend
class LeRobotPolicy(PolicyBackend):
    name = "lerobot"
    requires_ground_truth = False
    requires_image = True

    def __init__(self, checkpoint: str | os.PathLike, *,
                 action_layout: Optional[str] = None, state_layout: Optional[str] = None,
                 image_key: Optional[str] = None, state_key: Optional[str] = None,
                 allow_missing_cameras: bool = False, resize: bool = True,
                 gripper_scale: float = 1.0, control_hz: float = DEFAULT_CONTROL_HZ,
                 horizon: Optional[int] = None, device: str = "auto",
                 num_threads: Optional[int] = 1, vlm_path: str | os.PathLike | None = None,
                 config_overrides: Optional[Mapping[str, Any]] = None,
                 strict: bool = True) -> None:
        info = read_checkpoint_info(checkpoint)
        self.info = info
        if not (math.isfinite(gripper_scale) and gripper_scale > 0.0):
            raise ValueError(f"gripper_scale must be > 0, got {gripper_scale}")
        if not (math.isfinite(control_hz) and control_hz > 0.0):
            raise ValueError(f"control_hz must be > 0, got {control_hz}")
        if horizon is not None and horizon < 1:
            raise ValueError("horizon must be >= 1")
        if info.env_state_key is not None:
            raise ValueError(f"the policy needs {info.env_state_key!r} (privileged environment "
                             "state), which a real robot does not observe: not supported")
        self.action_layout = resolve_layout(action_layout, info.action_dim, "action")
        self.image_key, self.image_size = self._pick_image(info, image_key,
                                                           allow_missing_cameras, resize)
        self.requires_image = self.image_key is not None
        self.state_key, self.state_layout = self._pick_state(info, state_key, state_layout)
        self.gripper_scale = float(gripper_scale)
        self.dt = 1.0 / float(control_hz)
        self.vlm_path = self._check_vlm_path(info, vlm_path)

        self.device = resolve_device(device)
        if self.device.type == "cpu" and num_threads:
            torch.set_num_threads(int(num_threads))
        PreTrainedConfig, factory = import_lerobot()
        self.lerobot_version = lerobot_version()
        has_pipelines = hasattr(factory, "make_pre_post_processors")
        if info.has_processors and not has_pipelines:
            raise ValueError(
                f"{info.folder} was saved by lerobot >= 0.4 (it has {PREPROCESSOR_FILE}); the "
                f"installed lerobot {self.lerobot_version} predates those processor files. "
                "Install lerobot >= 0.4 (it needs torch < 2.11) or use a checkpoint saved by "
                "lerobot < 0.4")
        if has_pipelines and not info.has_processors:
            raise ValueError(
                f"{info.folder} has no {PREPROCESSOR_FILE} / {POSTPROCESSOR_FILE}: it was saved "
                f"by lerobot < 0.4, whose normalisation lives in the weights; the installed "
                f"lerobot {self.lerobot_version} needs it migrated first (python -m "
                "lerobot.processor.migrate_policy_normalization) or use lerobot 0.3.x")

        config = PreTrainedConfig.from_pretrained(str(info.folder), local_files_only=True)
        config.device = str(self.device)
        if getattr(config, "pretrained_backbone_weights", None) is not None:
            config.pretrained_backbone_weights = None  # in model.safetensors; never download
        if getattr(config, "load_vlm_weights", False):
            config.load_vlm_weights = False  # the full weights are in model.safetensors
        if self.vlm_path is not None:
            config.vlm_model_name = str(self.vlm_path)
        for key, value in (config_overrides or {}).items():
            if not hasattr(config, key):
                raise ValueError(f"config_overrides: the {info.policy_type} config has no {key!r}")
            setattr(config, key, value)
        self.config = config
        try:
            policy_class = factory.get_policy_class(config.type)
        except (NotImplementedError, ValueError, KeyError) as error:
            raise ValueError(f"lerobot {self.lerobot_version} has no policy type "
                             f"{config.type!r}: {error}") from error
        except (RuntimeError, OSError) as error:
            raise_torchvision_mismatch(error)
            raise
        self.policy = policy_class.from_pretrained(str(info.folder), config=config,
                                                   strict=strict).eval()
        self.preprocessor = self.postprocessor = None
        if has_pipelines:
            self.preprocessor, self.postprocessor = self._load_pipelines(factory, config, info)
        else:
            self._check_legacy_statistics()

        chunk = int(getattr(config, "chunk_size", 0) or info.chunk_size or 0) or None
        steps = int(getattr(config, "n_action_steps", 0) or info.n_action_steps or 0) or None
        self.horizon = int(horizon or steps or chunk or 1)
        if chunk:
            self.horizon = min(self.horizon, chunk)

    # ------------------------------------------------------------------ contract
    def reset(self, skill: Optional[SkillSpec]) -> None:
        self.policy.reset()  # drops lerobot's action / observation queues
        for pipeline in (self.preprocessor, self.postprocessor):
            if pipeline is not None and hasattr(pipeline, "reset"):
                pipeline.reset()

    def infer(self, observation: Observation) -> ActionChunk:
        batch = self.make_batch(observation)
        with torch.no_grad():
            if self.preprocessor is not None:
                batch = self.preprocessor(batch)
            actions = self.policy.predict_action_chunk(batch)
            if self.postprocessor is not None:
                actions = self.postprocessor(actions)
        actions = torch.as_tensor(actions).detach().to("cpu", torch.float64).numpy()
        if actions.ndim == 2:  # a policy without chunks: one (B, D) action
            actions = actions[:, None, :]
        if actions.ndim != 3 or actions.shape[0] != 1:
            raise ValueError(f"the policy returned actions of shape {actions.shape}, expected "
                             "(1, H, D)")
        if actions.shape[2] != LAYOUTS[self.action_layout]:
            raise ValueError(f"the policy returned {actions.shape[2]}-D actions; action layout "
                             f"{self.action_layout!r} needs {LAYOUTS[self.action_layout]}")
        positions = actions_to_joints(actions[0, :self.horizon], self.action_layout,
                                      self.gripper_scale)
        return ActionChunk(list(PANDA_JOINT_NAMES), positions, self.dt)

    # ------------------------------------------------------------------ batch
    def make_batch(self, observation: Observation) -> dict[str, Any]:
        """The LeRobot batch (size 1, on the policy's device) for `observation`."""
        joints = panda_joints(observation)
        batch: dict[str, Any] = {"task": [str(observation.skill.instruction)]}
        if self.image_key is not None:
            batch[self.image_key] = image_to_tensor(observation.image,
                                                    self.image_size).to(self.device)
        if self.state_key is not None:
            state = joints_to_state(joints, self.state_layout, self.gripper_scale)
            batch[self.state_key] = torch.as_tensor(state, dtype=torch.float32,
                                                    device=self.device).unsqueeze(0)
        return batch

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _pick_image(info: CheckpointInfo, image_key: Optional[str], allow_missing: bool,
                    resize: bool) -> tuple[Optional[str], Optional[tuple[int, int]]]:
        keys = list(info.image_features)
        if image_key is None:
            if not keys:
                return None, None
            if len(keys) > 1:
                raise ValueError(f"the policy has several cameras {keys}: name the one the "
                                 "stack's camera feeds with image_key")
            image_key = keys[0]
        elif image_key not in info.image_features:
            raise ValueError(f"image_key {image_key!r} is not an image input of the policy "
                             f"(its image inputs: {keys})")
        others = [k for k in keys if k != image_key]
        if others and not allow_missing:
            raise ValueError(f"the policy also expects cameras {others}, which the stack does "
                             "not have; allow_missing_cameras=True leaves them out (only for "
                             "policies that tolerate absent cameras, such as SmolVLA)")
        shape = info.image_features[image_key]
        return image_key, ((shape[1], shape[2]) if resize else None)

    @staticmethod
    def _pick_state(info: CheckpointInfo, state_key: Optional[str],
                    state_layout: Optional[str]) -> tuple[Optional[str], Optional[str]]:
        if state_key is not None and state_key != info.state_key:
            raise ValueError(f"state_key {state_key!r} is not the policy's state input "
                             f"({info.state_key!r})")
        if info.state_key is None:
            if state_layout is not None:
                raise ValueError("state_layout given but the policy takes no state input")
            return None, None
        return info.state_key, resolve_layout(state_layout, int(info.state_dim or 0), "state")

    @staticmethod
    def _check_vlm_path(info: CheckpointInfo, vlm_path: str | os.PathLike | None) -> Optional[Path]:
        if vlm_path is not None:
            path = Path(vlm_path).expanduser()
            if info.vlm_model_name is None:
                raise ValueError(f"vlm_path given but the {info.policy_type} config has no "
                                 "vlm_model_name")
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"vlm_path {str(path)!r} is not a local model folder "
                                        "(no config.json)")
            return path
        name = info.vlm_model_name
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        if name is not None and not Path(name).expanduser().is_dir() and not offline:
            raise ValueError(
                f"the {info.policy_type} policy builds its VLM from {name!r}, a hub id: pass "
                "vlm_path=<local folder with that model's config, processor and tokenizer files> "
                "or set HF_HUB_OFFLINE=1 with the model in the Hugging Face cache")
        return None

    def _load_pipelines(self, factory: Any, config: Any, info: CheckpointInfo) -> tuple[Any, Any]:
        def step_names(filename: str) -> set[str]:
            saved = json.loads((info.folder / filename).read_text())
            return {str(step.get("registry_name")) for step in saved.get("steps", [])
                    if isinstance(step, Mapping)}

        pre_steps = step_names(PREPROCESSOR_FILE)
        pre_overrides: dict[str, dict[str, Any]] = {}
        if "device_processor" in pre_steps:
            pre_overrides["device_processor"] = {"device": str(self.device)}
        if self.vlm_path is not None and "tokenizer_processor" in pre_steps:
            pre_overrides["tokenizer_processor"] = {"tokenizer_name": str(self.vlm_path)}
        return factory.make_pre_post_processors(config, pretrained_path=str(info.folder),
                                                preprocessor_overrides=pre_overrides)

    def _check_legacy_statistics(self) -> None:
        """lerobot < 0.4: statistics are buffers that stay infinite when the file lacks them."""
        prefixes = ("normalize_inputs.", "unnormalize_outputs.")
        missing = sorted({name.rsplit(".", 1)[0] for name, value in self.policy.state_dict().items()
                          if name.startswith(prefixes) and not torch.isfinite(value).all()})
        if missing:
            raise ValueError(f"{self.info.folder} lacks the normalisation statistics {missing} "
                             "(a checkpoint saved by lerobot >= 0.4 keeps them in processor "
                             "files, which this lerobot cannot read)")


def panda_joints(observation: Observation) -> np.ndarray:
    """The 9 Panda joints of `observation` in PANDA_JOINT_NAMES order; finite or ValueError."""
    return joint_vector(observation, PANDA_JOINT_NAMES)


__all__ = ["LeRobotPolicy", "CheckpointInfo", "LAYOUTS", "INSTALL_HINT", "TORCHVISION_HINT",
           "import_lerobot", "read_checkpoint_info", "check_checkpoint_folder", "resolve_layout",
           "joints_to_state", "actions_to_joints", "image_to_tensor", "panda_joints"]
