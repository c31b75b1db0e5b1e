"""`VLAPolicy`: the built-in learned backend (policy:=vla); camera + joints + skill text in.

It reads only what a real robot has: the camera image, the measured joint positions and the
active skill's instruction (never `Observation.scene`), and, where the checkpoint says so
(`push_place`, `cube_place`), the skill's destination as the task plan gives it. The model
predicts, for the next `action_horizon` steps of `action_dt` s, the 7 arm joints as offsets from
the measured joints and the gripper opening (see config.py for why joint-space deltas),
de-normalised with the dataset statistics of its config; the backend adds the measured joints
back and returns absolute 9-joint targets, so the rest of the stack (chunk scheduling, safety
limits) is unchanged. A model in the end-effector space (`ee_delta`, see ee_space.py) predicts
grasp-point offsets instead; the backend turns them into the same absolute joint targets with
the expert's IK.

Device: "auto" takes CUDA when present; on CUDA the model runs in half precision. On CPU the
torch thread count defaults to 1: the policy shares a few cores with the simulator and the other
nodes, and OpenMP threads that spin against busy cores get far slower, not faster.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vla_bringup.core.instruction import pick_text
from vla_bringup.core.robot import PANDA_FINGER_OPEN
from vla_bringup.core.skill_executor import base_skill_id, is_regrasp
from vla_bringup.policy.base import (ActionChunk, Observation, PolicyBackend, SkillSpec,
                                     joint_vector)
from vla_bringup.policy.temporal_ensemble import TemporalEnsemble
from vla_bringup.policy.vla.config import STATE_DIM, decode_actions, state_vector
from vla_bringup.policy.vla.encoders import TextEncoder
from vla_bringup.policy.vla.model import VLAModel, load_checkpoint, skill_indices

# Where the committed checkpoint lives (checkpoint:="" selects it).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default"
# A start_memory model's latched start is the median of its predictions on a skill's first
# START_FRAMES frames, not the first alone: on the first frame of an episode (arm at home, 35 cm
# above the table) the detector's world map was off by 8-10 cm in some scenes, and one frame
# later it was within 1 cm (docs/training_history.md, run 19). Nothing moves in a skill's first
# frames.
START_FRAMES = 5
# cube_place_view "pick_start": how many of a pick's first frames may be kept (as many as a
# skill latches its start from), and how open the fingers must be on them (m, their mean): an
# empty hand, not one closing on a cube.
PICK_VIEW_FRAMES = START_FRAMES
PICK_VIEW_MIN_OPENING_M = 0.9 * PANDA_FINGER_OPEN


def _onto_cube(skill: Optional[SkillSpec]) -> bool:
    """A place whose destination is a cube (the planner names cubes "<colour>_cube")."""
    return (skill is not None and skill.skill == "place"
            and (skill.destination or "").endswith("_cube"))


def resolve_device(device: str = "auto") -> torch.device:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but torch sees no CUDA device")
    return torch.device(device)


class VLAPolicy(PolicyBackend):
    name = "vla"
    requires_ground_truth = False
    requires_image = True

    def __init__(self, checkpoint: str | Path = "", *, horizon: Optional[int] = None,
                 dt: Optional[float] = None, device: str = "auto",
                 half: Optional[bool] = None, num_threads: Optional[int] = 1,
                 model: Optional[VLAModel] = None,
                 text_encoder: Optional[TextEncoder] = None,
                 compile_mode: Optional[str] = None,
                 ensemble_decay: Optional[float] | str = "checkpoint") -> None:
        self.device = resolve_device(device)
        if self.device.type == "cpu" and num_threads:
            torch.set_num_threads(int(num_threads))
        if model is None:
            folder = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
            model = load_checkpoint(folder, "cpu")
        self.half = self.device.type == "cuda" if half is None else bool(half)
        if self.half and self.device.type != "cuda":
            raise ValueError("half precision is for CUDA only")
        self.dtype = torch.float16 if self.half else torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        self.config = model.config
        self.min_inference_period_s = self.config.inference_period_s
        self.min_action_lead_s = self.config.action_lead_s
        if self.config.push_place == "planned" and not self.config.push_offsets:
            raise ValueError("this checkpoint sets push_place 'planned' but has no push_offsets "
                             "(the trainer writes them from a dataset with pushes)")
        # torch.compile: "default" (about 1.5x faster on CPU, ~30 s to compile on the first
        # inference) or "reduce-overhead" (CUDA graphs: on GPU, launch overhead dominates).
        # Call warmup() before serving so the compilation is not paid by the first real frame.
        self.compile_mode = compile_mode
        self._forward = torch.compile(self.model, mode=compile_mode) if compile_mode else self.model
        self._mark_step = (getattr(torch.compiler, "cudagraph_mark_step_begin", None)
                           if compile_mode == "reduce-overhead" else None)
        if horizon is not None and horizon < 1:
            raise ValueError("horizon must be >= 1")
        # The model's chunk has a fixed length and spacing: a shorter horizon truncates it, a
        # longer one is capped (the scheduler samples chunks by time, so any dt is fine).
        self.horizon = min(int(horizon or self.config.action_horizon), self.config.action_horizon)
        # Chunks carry the model's own dt; a different requested dt is only reported.
        self.dt_mismatch = dt is not None and not math.isclose(dt, self.config.action_dt,
                                                               rel_tol=1e-6)
        self.text_encoder = text_encoder if text_encoder is not None else TextEncoder()
        self._language: dict[str, torch.Tensor] = {}  # instruction -> embedding on the device
        self._skill_indices: dict[str, torch.Tensor] = {}  # primitive -> index on the device
        self.last_outputs: dict[str, float] = {}
        # Temporal ensembling of successive chunks (temporal_ensemble.py): the checkpoint's
        # setting by default; a number overrides it, None turns it off.
        decay = self.config.temporal_ensemble if ensemble_decay == "checkpoint" else ensemble_decay
        self._ensemble = None if decay is None else TemporalEnsemble(decay)
        # start_memory models: their predictions on the skill's first frames (START_FRAMES),
        # and the median of them, updated only while they come in.
        self._starts: list[torch.Tensor] = []
        self._latched: Optional[torch.Tensor] = None
        # push_place "planned": the active push's offset from the target's start to its place
        self._push_offset: Optional[torch.Tensor] = None
        self._skill_error: Optional[str] = None
        # cube_place "target_detector": what to ask the detector for on a place onto a cube
        self._place_query: Optional[str] = None
        # place_target: the active skill's target is the object in the hand (_place_from_hand)
        self._target_in_hand = False
        # cube_place_view "pick_start": frames (preprocessed pixels, raw state) kept from the
        # last pick's first ones, the (skill id, target) of that pick, how many of the active
        # pick's frames are still to come before keeping stops, and the lower cube found in
        # the kept frames for the active place.
        self._pick_views: list[tuple[torch.Tensor, np.ndarray]] = []
        self._pick_views_source: Optional[tuple[str, str]] = None
        self._pick_frames_left = 0
        self._lower_cube: Optional[torch.Tensor] = None
        self._end_effector = None
        if self.config.action_space == "ee_delta":
            from vla_bringup.policy.vla.ee_space import EndEffectorSpace  # PyBullet: only here
            self._end_effector = EndEffectorSpace()

    # ------------------------------------------------------------------ contract
    def reset(self, skill: Optional[SkillSpec]) -> None:
        if self._ensemble is not None:
            self._ensemble.reset()  # a new skill's chunks do not blend with the last one's
        self._starts, self._latched = [], None
        self._push_offset, self._skill_error = self._planned_push(skill)
        self._place_query = self._cube_place_query(skill)
        self._target_in_hand = self._place_from_hand(skill)
        self._reset_pick_views(skill)
        for text in (skill.instruction if skill else None, self._place_query):
            if text is not None:
                self._embedding(text)  # encode now, not at the first frame
        self._lower_cube = self._lower_cube_in_pick_views(skill)

    def infer(self, observation: Observation) -> ActionChunk:
        if self._skill_error:
            raise ValueError(self._skill_error)
        if observation.image is None:
            raise ValueError("the vla backend needs the camera image in the observation")
        image = np.asarray(observation.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be HxWx3 uint8, got {image.shape} {image.dtype}")
        joints = joint_vector(observation, self.config.joint_names)
        with self._no_grad():
            pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
            pixels = self.model.preprocess(pixels.unsqueeze(0)).to(self.dtype)
            language = self._embedding(observation.skill.instruction).unsqueeze(0)
            raw_state = self._state(joints)
            state = torch.as_tensor(raw_state, dtype=torch.float32,
                                    device=self.device).unsqueeze(0)
            self._remember_pick_view(pixels, raw_state)
            if self._mark_step is not None:
                self._mark_step()  # a new CUDA-graph step: the previous outputs are consumed
            skill = (self._skill_index(observation.skill.skill) if self.config.reads_skill
                     else None)
            # The latched start: None for models without start_memory (they ignore it) and on a
            # skill's first frame.
            outputs = self._forward(pixels, language, state, start_positions=self.latched_start(),
                                    skill=skill, held_target=self._held_target(state))
            if self.config.start_memory and len(self._starts) < START_FRAMES:
                latched = self.model.latched_positions(outputs).detach().clone()
                self._starts.append(self._place_from_plan(latched, pixels, raw_state))
                self._latched = torch.stack(self._starts).median(0).values
            prediction = self.model.predict(outputs)
            actions = prediction["actions"][0].float().cpu().numpy()
            done = float(prediction["done"][0])
            progress = float(prediction["progress"][0])
        actions = actions[:self.horizon]
        if self._end_effector is not None:
            # The measured grasp pose is already in the state: no second forward kinematics.
            positions = self._end_effector.decode(actions, raw_state[STATE_DIM:])
        else:
            positions = decode_actions(actions, joints, self.config.action_space)
        if self._ensemble is not None:
            positions = self._ensemble(observation.stamp, self.config.action_dt, positions)
        self.last_outputs = {"done_probability": done, "progress": progress}
        return ActionChunk(list(self.config.joint_names), positions, self.config.action_dt,
                           skill_done=done >= self.config.done_threshold,
                           progress=min(1.0, max(0.0, progress)))

    # ------------------------------------------------------------------ helpers
    def _planned_push(self, skill: Optional[SkillSpec]
                      ) -> tuple[Optional[torch.Tensor], Optional[str]]:
        """For a push under push_place "planned": the offset (m) from the target's start to
        the place, for the plan's direction; or the error to raise when the checkpoint has none
        (raised by `infer`, where the node reports it, rather than here)."""
        if skill is None or skill.skill != "push" or self.config.push_place != "planned":
            return None, None
        offset = self.config.push_offsets.get(skill.destination or "")
        if offset is None:
            return None, (f"push destination {skill.destination!r} has no planned offset in "
                          f"this checkpoint (it has {sorted(self.config.push_offsets)})")
        vector = np.asarray(offset, dtype=np.float64)
        vector = vector * (1.0 + self.config.push_extra_m / np.linalg.norm(vector))
        return torch.tensor(vector, dtype=torch.float32, device=self.device), None

    def _cube_place_query(self, skill: Optional[SkillSpec]) -> Optional[str]:
        """Under cube_place "target_detector", for a place onto a cube: the text that asks the
        target detector for that cube (the planner's pick text for it)."""
        if self.config.cube_place != "target_detector" or not _onto_cube(skill):
            return None
        return pick_text(skill.destination)

    def _place_from_hand(self, skill: Optional[SkillSpec]) -> bool:
        """Whether the skill's target is the grasp point (place_target): a place's, under
        "grasp"; under "grasp_onto_cubes", only a place onto a cube."""
        if skill is None or skill.skill != "place" or self.config.place_target == "model":
            return False
        return self.config.place_target == "grasp" or _onto_cube(skill)

    def _reset_pick_views(self, skill: Optional[SkillSpec]) -> None:
        """Under cube_place_view "pick_start": a pick keeps its first PICK_VIEW_FRAMES frames
        (those with the fingers open) for the place after it. A regrasp keeps its own pick's
        and adds none (its hand starts down among the cubes); any other pick starts afresh,
        even under an id seen before. The views then stay until the next pick."""
        self._pick_frames_left = 0
        if skill is None:
            self._pick_views, self._pick_views_source = [], None
        elif (skill.skill == "pick" and self.config.cube_place == "target_detector"
              and self.config.cube_place_view == "pick_start"):
            source = (base_skill_id(skill.skill_id), skill.target_object)
            if not is_regrasp(skill.skill_id):
                self._pick_views, self._pick_views_source = [], source
                self._pick_frames_left = PICK_VIEW_FRAMES
            elif source != self._pick_views_source:  # a regrasp of a pick never seen
                self._pick_views, self._pick_views_source = [], None

    def _remember_pick_view(self, pixels: torch.Tensor, raw_state: np.ndarray) -> None:
        if self._pick_frames_left > 0:
            self._pick_frames_left -= 1
            if raw_state[STATE_DIM - 1] >= PICK_VIEW_MIN_OPENING_M:
                self._pick_views.append((pixels, raw_state.copy()))

    def _lower_cube_in_pick_views(self, skill: Optional[SkillSpec]) -> Optional[torch.Tensor]:
        """(1, 3) m for a place onto a cube whose pick (of the same cube) left views: the
        median of where the detector finds the lower cube in them. None: the place finds it
        in its own frames. The views show the scene before the pick: a lower cube that the
        pick nudged is aimed at where it was."""
        if (self._place_query is None or not self._pick_views
                or self._pick_views_source[1] != skill.target_object):
            return None
        # One frame at a time, not batched: a batch gives other float roundings, and the
        # committed table was measured this way (batched, 31 of 60 stack episodes ended a little
        # differently and one changed outcome). It runs once, when the place starts.
        with self._no_grad():
            found = torch.cat([self._find_cube(view, state) for view, state in self._pick_views])
            return found.median(0).values.unsqueeze(0)

    def _find_cube(self, pixels: torch.Tensor, raw_state: np.ndarray) -> torch.Tensor:
        """(1, 3) m: where the target detector finds the place query's cube. The fingers are
        given as open: the detector reads a closed hand as "the target is in it", true of a
        pick's target but not of a cube to put something on."""
        open_hand = raw_state.copy()
        open_hand[STATE_DIM - 1] = PANDA_FINGER_OPEN  # the gripper opening column
        state = torch.as_tensor(open_hand, dtype=torch.float32, device=self.device).unsqueeze(0)
        language = self._embedding(self._place_query).unsqueeze(0)
        return self.model.find_target(pixels, language, state).float()

    def _place_from_plan(self, latched: torch.Tensor, pixels: torch.Tensor,
                         raw_state: np.ndarray) -> torch.Tensor:
        """One frame's (1, 6) latch, m, with its place taken from the plan where the checkpoint
        says so (push_place, cube_place, cube_place_view, cube_place_extra_ratio), in place.
        The push offset and a lower cube found in the pick's views are the same on every frame,
        so the median of these is the median target plus them."""
        if self._push_offset is not None:
            latched[:, 3:6] = latched[:, :3] + self._push_offset
        elif self._place_query is not None:
            lower_cube = (self._lower_cube if self._lower_cube is not None
                          else self._find_cube(pixels, raw_state))
            latched[:, 3:6] = lower_cube
            # beyond the lower cube, away from the held one (this frame's target), in the plane
            latched[:, 3:5] += self.config.cube_place_extra_ratio * (
                lower_cube[:, :2] - latched[:, :2])
        return latched

    def _held_target(self, state: torch.Tensor) -> Optional[torch.Tensor]:
        """(1, 3) m: the grasp point (an ee_delta state's columns after the joints), as the
        target of a place that place_target takes from the hand (_place_from_hand); None
        otherwise (the detector's target is used). It is used on every frame of the place,
        also after the release (using it only while the fingers hold did not help on
        validation seeds)."""
        return state[:, STATE_DIM:STATE_DIM + 3] if self._target_in_hand else None

    def latched_start(self) -> Optional[torch.Tensor]:
        """The start a start_memory model reads: the median of the skill's first predictions
        (fixed after START_FRAMES), None before the first."""
        return self._latched

    def _no_grad(self):
        # no_grad under torch.compile (as inference has always run there), else inference_mode
        return torch.no_grad() if self.compile_mode else torch.inference_mode()

    def _skill_index(self, name: str) -> torch.Tensor:
        """(1,) int64 on the device, made once per primitive rather than on every frame."""
        index = self._skill_indices.get(name)
        if index is None:
            index = self._skill_indices[name] = skill_indices([name], self.device)
        return index

    def _state(self, joints: np.ndarray) -> np.ndarray:
        state = state_vector(joints)
        if self._end_effector is None:
            return state
        return np.concatenate([state, self._end_effector.pose(joints)])

    def _embedding(self, text: str) -> torch.Tensor:
        vector = self._language.get(text)
        if vector is None:
            vector = self.text_encoder(text, self.config.language_rows).to(self.device)
            if len(self._language) > 4096:
                self._language.clear()
            self._language[text] = vector
        return vector

    def warmup(self, image_shape: tuple[int, int] = (224, 224), runs: int = 2) -> None:
        """Run dummy inferences so the first real frame does not pay for lazy initialisation."""
        dummy = np.zeros((*image_shape, 3), dtype=np.uint8)
        skills = [SkillSpec("warmup", "pick", "pick up the red cube", "red_cube")]
        if self.config.place_target != "model":  # a place's forward differs (compiled apart)
            skills.append(SkillSpec("warmup-place", "place", "place the red cube on the blue cube",
                                    "red_cube", "blue_cube"))
        joints = np.zeros(len(self.config.joint_names))
        for skill in skills:
            self.reset(skill)
            for _ in range(runs):
                self.infer(Observation(0.0, list(self.config.joint_names), joints, skill, dummy))
        self.reset(None)  # nothing of the dummy frames may carry over to the first real skill


def default_checkpoint_available() -> bool:
    return (DEFAULT_CHECKPOINT / "config.json").is_file() and (
        DEFAULT_CHECKPOINT / "model.safetensors").is_file()


__all__ = ["VLAPolicy", "DEFAULT_CHECKPOINT", "resolve_device", "default_checkpoint_available"]
