"""Every choice of the built-in VLA in one validated, JSON-serialisable dataclass.

Action space (`action_space="joint_delta"`, the default): each chunk row holds 8 numbers, the 7
arm joints as offsets (rad) from the joint positions measured at the observation, plus the gripper
opening (m, 0 closed .. 0.04 open, both fingers get it). Why joint space: the whole stack speaks
9-joint position targets (chunks, skill controller, safety limits), so the policy's output goes
to the robot with no IK in the loop (no solver failures, no solver latency, no second copy of
the kinematics in the policy) and the safety checker clamps exactly what the policy asked for.
Why deltas: the same motion ("go down 5 cm") is nearly the same offset wherever the arm is, so
offsets are easier to learn than absolute angles and stay near zero when the arm should hold.
`joint_position` (absolute targets) is kept as an option. `ee_delta` is the end-effector
space (grasp-point offsets, yaw offset, gripper; see ee_space.py): the network no longer has to
learn the arm's inverse kinematics, at the price of one IK solve per chunk row at inference.
All are normalised with dataset statistics per (chunk step, dimension): offsets grow along the
chunk, so one scale per dimension would squash the first steps.

No torch and no numpy at import time: `cli/bench_policy.py` imports this on bare machines.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from vla_bringup.core.instruction import DIRECTIONS
from vla_bringup.core.robot import PANDA_JOINT_NAMES

VISION_ENCODERS = ("efficientnet_lite0", "small_cnn")
FUSIONS = ("early", "late", "dense", "cross_attention")
HEADS = ("continuous", "discrete")
HEAD_ARCHS = ("transformer", "mlp")
POSITION_SOURCES = ("vision_language", "keypoints", "fused", "pixels")
LANGUAGE_INPUTS = ("sentence", "tokens")
DETECTOR_LANGUAGE = ("shared", "per_point")
PUSH_PLACES = ("model", "planned")
CUBE_PLACES = ("model", "target_detector")
CUBE_PLACE_VIEWS = ("place", "pick_start")
PLACE_TARGETS = ("model", "grasp", "grasp_onto_cubes")
VISION_STAGES = ("head", "stride16")
ACTION_SPACES = ("joint_delta", "joint_position", "ee_delta")
ARM_DOF = 7
# Options tried and removed (their results stay in docs/training_history.md), with the value that
# meant "off": a saved config.json that carries one at that value still loads.
# place_blend_noise: noise on the detector's place in the place_relative blend (14th session).
# (skill_input, removed in the 15th session, came back in the 29th; head_language, removed in
# the 15th, in the 30th.)
REMOVED_FIELDS = {"place_blend_noise": 0.0}
ACTION_DIM = 8  # joint spaces: 7 arm joints + gripper opening
STATE_DIM = 8  # 7 arm joint positions + gripper opening (mean of the fingers)
EE_ACTION_DIM = 5  # ee_delta: grasp point offset xyz, yaw offset, gripper opening
EE_STATE_DIM = 4  # ee_delta models also see the grasp point xyz and yaw
POSITION_DIM = 6  # position_aux: target object xyz + place xyz (m, world)
LANGUAGE_DIM = 384  # all-MiniLM-L6-v2
CONFIG_VERSION = 1


def _matrix(value: Any, rows: int, cols: int, name: str) -> list[list[float]]:
    if len(value) != rows or any(len(row) != cols for row in value):
        raise ValueError(f"{name} must be {rows}x{cols}")
    out = [[float(v) for v in row] for row in value]
    if not all(math.isfinite(v) for row in out for v in row):
        raise ValueError(f"{name} holds NaN or inf")
    return out


def _vector(value: Any, size: int, name: str) -> list[float]:
    return _matrix([value], 1, size, name)[0]


@dataclasses.dataclass
class VLAConfig:
    # --- observation
    image_size: int = 224  # model input, square; frames are cropped then resized to it
    image_crop: Optional[list[float]] = None  # (top, left, bottom, right) fractions, None = all
    joint_names: list[str] = dataclasses.field(default_factory=lambda: list(PANDA_JOINT_NAMES))
    # --- vision
    vision_encoder: str = "efficientnet_lite0"
    vision_trainable_blocks: int = 0  # 0: frozen; k: last k MBConv blocks + head conv trained
    # Lite0 feature map used as image tokens: "head" (1280 x S/32 x S/32, after the head conv)
    # or "stride16" (the 112-channel map after block 11 of 16, S/16 x S/16, frozen): four times
    # the tokens, each cell 16 px, for objects a few pixels wide.
    vision_stage: str = "head"
    cnn_channels: list[int] = dataclasses.field(default_factory=lambda: [32, 64, 128, 256, 256])
    # --- language (all-MiniLM-L6-v2, cached per instruction)
    language_dim: int = LANGUAGE_DIM
    language_tokens: int = 4  # the instruction becomes this many d_model tokens
    # "sentence": the mean-pooled sentence embedding (B, 384). "tokens": that embedding and
    # MiniLM's token states as rows (B, language_max_tokens, 384; encoders.TextEncoder), zero
    # rows for padding, read by learned attention pools
    # (one per fusion token, one for the keypoint detector). Why: in the pooled vector, "to the
    # left" and "to the right" differ by cosine 0.97-0.99 and a push went the wrong way; the
    # direction word's own token state separates them, paraphrases included
    # (docs/training_history.md).
    language_input: str = "sentence"
    language_max_tokens: int = 16  # "tokens": rows; longer instructions are truncated
    # --- fusion
    fusion: str = "cross_attention"
    d_model: int = 256
    n_heads: int = 4
    fusion_layers: int = 2
    ffn_ratio: int = 2  # feed-forward width / d_model in fusion and head transformer layers
    keypoints: int = 32  # spatial-softmax keypoints in the pooled vision vector (early / late)
    dropout: float = 0.1
    # --- action head
    head: str = "continuous"
    head_arch: str = "transformer"
    head_layers: int = 2
    action_horizon: int = 16
    action_dt: float = 0.1  # s between chunk rows
    action_space: str = "joint_delta"
    action_bins: int = 256  # discrete head only
    done_threshold: float = 0.5
    # Inference only: decay of the temporal ensembling of successive chunks (see
    # policy/temporal_ensemble.py; 0 = plain mean), or None to execute each chunk as predicted.
    # A model trained on executed chunk labels needs it: see docs/training_history.md, run 12.
    temporal_ensemble: Optional[float] = None
    # Auxiliary head for training: the target object's and the place position (world frame,
    # from the generator's privileged columns), read from the fused tokens. It teaches the
    # fusion where to look; the policy never uses its output.
    position_aux: bool = False
    # With position_aux: the predicted positions also enter the action head as one more token,
    # so the head reads "where" directly instead of digging it out of the fused tokens.
    position_token: bool = False
    # With position_token on an end-effector model: the token also gets where the target object
    # was when the skill started (the backend latches its own first prediction of the skill;
    # training uses the true one, jittered). One frame cannot tell "about to push" from "pushed
    # and backed away": both show the arm above and behind the cube. How far the cube has moved
    # since the start can, and it says when a push has gone far enough (docs/training_history.md,
    # run 16).
    start_memory: bool = False
    # With start_memory: the place position is latched on the skill's first frame too, and the
    # token reads that instead of each frame's prediction. The place does not move during a
    # skill, but a push's destination is an empty patch of table that a single frame cannot
    # find once the cube has left its start: the live prediction crept along just ahead of the
    # cube and the push stalled (docs/training_history.md, run 18). The arm also hides a stack's
    # lower cube at the release.
    place_memory: bool = False
    # With place_memory: the predicted place is a learned blend of the detector's place and
    # "the target's start plus an offset", weight and offset read from the instruction alone.
    # A push's destination is 12 cm left or right of where the cube started: an empty patch of
    # table that the detector found only to about 5 cm (run 19), so the push never said done.
    # Relative to the latched start it needs only the direction word; the tray and a stack's
    # lower cube stay with the detector (the weight learns which is which).
    place_relative: bool = False
    # Inference only, with place_memory: where a push skill's latched place comes from.
    # "model": the detector's own place, latched with the start. "planned": the latched target
    # start plus `push_offsets[destination]`, the direction being the one the task plan gives
    # the skill (SkillSpec.destination; in the graph, SkillCommand.destination). Why: a push's
    # destination is an empty patch of table. In traces of d4s0 (then committed) the
    # detector found the cube to about 1 cm but latched that patch 6-19 cm off in the failed
    # pushes, and with the true place the same network pushed 14 of 16 (docs/training_history.md,
    # seventeenth session). The planner has already read the direction from the words.
    push_place: str = "model"
    # destination ("left" / "right") -> (x, y, z) m: where the training pushes' place lay from
    # the target's start, the mean over the training split's push episodes (set by the trainer;
    # export_checkpoint --data measures them on whole datasets). Both replacements start with
    # the skill's first latch: its very first chunk still reads the network's own place.
    push_offsets: Optional[dict[str, list[float]]] = None
    # Inference only, m: how much further than its offset a planned place lies. The network
    # stops short of the place it is given (pushes of 9-10 cm for a 12 cm place), so a place
    # 2 cm further brings the cube past the check's 8 cm with a margin (chosen on validation
    # seeds, never on the evaluation's: docs/training_history.md, seventeenth session).
    push_extra_m: float = 0.0
    # Inference only, with place_memory and the "pixels" detector: where a place skill onto a
    # cube latches its place. "model": the detector's place map. "target_detector": the
    # detector's target map, asked for that cube with the planner's pick text ("pick up the
    # blue cube", the cube being SkillSpec.destination) and an open-gripper cue. Why: the
    # target map learns from every frame of every skill and found cubes to 0.9 cm (median, xy)
    # where the place map, trained on the stack frames alone, was 1.6 cm off, and 2-5 cm in
    # many failed stacks (docs/training_history.md, seventeenth session).
    cube_place: str = "model"
    # Inference only, with cube_place "target_detector": how far beyond the lower cube the
    # latched place lies, as a fraction of the horizontal distance from the held cube (latched
    # target) to it, along that line. Why: traced stacks descended vertically onto a point short
    # of the given place on the side the arm came from, by about a fifth of the approach
    # (1.8-5.6 cm in the failures, the cube then tipping off), like the pushes' undershoot
    # (chosen on validation seeds, never on the evaluation's: docs/training_history.md, eighteenth
    # session). Later traces showed where most of that shortfall came from: the lower cube was
    # found in the place's own frames, where the detector drifts toward the hand (see
    # cube_place_view, whose "pick_start" needs no extra).
    cube_place_extra_ratio: float = 0.0
    # Inference only, with cube_place "target_detector": which frames the detector looks for the
    # lower cube in. "place": the place skill's own first frames. "pick_start": the first frames
    # of the pick before it (not its regrasps'), with the fingers open. Why: near the
    # hand the detector drifts toward it; in 4 traced failed stacks (validation seeds) the
    # place's first frames put the lower cube 4-13 cm off (median), the pick's first ones (arm
    # still high, nothing held) 0.2-2 cm. The extra ratio above made up for that drift and then
    # only overshoots: 0 with this view (docs/training_history.md, twenty-seventh session). The
    # views show the scene before the pick: a lower cube the pick nudges is aimed at where it was.
    cube_place_view: str = "place"
    # Inference only, with position_token and ee_delta: where a place skill's target (the
    # object in the hand) is. "model": the detector's target map, which reads the skill's
    # words. "grasp": the grasp point from the joint state (forward kinematics), used on every
    # frame of the place, also after the release; 1.0 cm from the held cube's centre (median
    # over the first place frames of 8 validation stacks; 1.9 cm at most).
    # Why: with held-out words the detector lost the held cube, 13 cm off for "rest the C brick
    # atop the D brick" and 6 cm for "lay the C box over the D box", against 3.3 cm with the
    # planner's text (same frames; docs/training_history.md, thirtieth session).
    # "grasp_onto_cubes": "grasp" for places onto a cube, "model" for the others (the tray).
    # Why: a stack must land its cube within a few centimetres, a tray place need not, and on
    # 100 validation pick & places with held-out words the detector's target did a little
    # better (94 against 92; thirty-first session).
    place_target: str = "model"
    # Inference only: the least time (s) between two camera frames the policy reads. The policy
    # node infers no more often than this, whatever its inference_rate_hz, and `evaluate` uses
    # it unless told otherwise. Why: the model was tuned at this CPU's pace, where a frame is
    # read about every 0.3 s (an inference and its delivery take about 0.25 s). On a device fast
    # enough to read every frame it succeeded on far fewer episodes: places stayed hovering
    # with the cube released, never saying done (docs/training_history.md, eighteenth and nineteenth
    # sessions). 0: no floor.
    inference_period_s: float = 0.0
    # Inference only: the least time (s) from a camera frame to the first moment of its chunk
    # that runs. A chunk that comes back sooner is run from that later moment on (its rows
    # shifted, the stamp kept): the policy node and `evaluate` do this. Why: on this CPU a chunk
    # arrives about 0.25 s after its frame, and the model was tuned with that; run from the
    # start (a fast device), its places hovered and its stacks fell short. On validation seeds
    # with a frame every 0.3 s and no delay, dropping the first 2-3 rows of each chunk gave
    # back what the delay gave (docs/training_history.md, nineteenth session). 0: run chunks as they
    # come.
    action_lead_s: float = 0.0
    # With start_memory: each chunk row's grasp-point offset is a learned weighting of anchor
    # vectors (from the grasp point to: itself, the target as seen now, the target's latched
    # start, the place) plus a residual, instead of a number the head must produce on its own.
    # Why: the expert's via points are "12 cm above the cube", "6.5 cm behind the cube's start",
    # "on the lower cube"; the head read where the cube was from the position token only to a
    # few centimetres, and stacks were released off the lower cube (docs/training_history.md,
    # eleventh session). With anchors, the precision of a via point is the detector's.
    action_anchors: bool = False
    # The skill primitive the skill controller hands over with the text (policy.base.SKILLS:
    # pick, place, push) as a learned vector added to the state token. Which cube and where still
    # come from the words, the image and the plan's destination. Why: a stack's place with an
    # unseen wording ("rest the red brick atop the green brick") was read as a finished pick: it
    # said done at nearly every chunk with the cube still in the hand (44 of 71 failed held-out
    # stacks, docs/training_history.md, twenty-eighth session), while the controller knew all
    # along that the skill was a place. A variant (also beside the words in the place_relative
    # blend) was tried in the 13th session on an older recipe, whose held-out failures came
    # from misread nouns, and did not help then; it was removed in the 15th. On the recipe
    # (29th session) it did not help either (validation stacks, held-out phrasings: 8 of 32
    # against 11), so the recipe leaves it off.
    skill_input: bool = False
    # One copy of the action, done and progress outputs per skill primitive (the head's last linear
    # layers; the decoder is shared), picked by the primitive the skill controller names. Why:
    # with one set, the only thing that tells a place's first frames (cube held and lifted) from
    # a pick's last ones (the same picture, "done") is the words, so training pushes the head to
    # read the primitive out of them, and an unseen place text ("rest the C brick atop the D
    # brick") was read as a finished pick (0 of 50 such evaluation stacks, thirty-first session).
    # skill_input only added the primitive beside the words, and the head kept using the words.
    # With skill_heads (thirty-second session) that text's done probability on a place's first
    # frames fell from 0.91 to 0.002, and it stacked 8 of 11 validation episodes (0 before).
    skill_heads: bool = False
    # False: the fusion's language tokens are learned constants, the same for every instruction,
    # so the cross-attention asks the image the same questions whatever the words. The action
    # and done heads then learn which cube and where from the position token (the pixel
    # detector still reads the words) and which motion from the skill primitive; the words
    # matter only where the detector reads them. Why: held-out stack places were read as
    # finished picks ("rest the C brick atop the D brick", 0 of 11 validation episodes in the
    # 29th and 30th sessions), and the head's reading of the words is what failed: with the
    # planner's text the same frames gave a done probability of 0.001, with that text 0.91.
    # Tried in the 14th session, when pushes and stacks still needed the words (the push's
    # place and the lower cube came from the detector's place map, 5 and 3 cm off); since then
    # both come from the plan (push_place "planned", cube_place "target_detector").
    head_language: bool = True
    # Where the auxiliary head reads: "vision_language" (its own cross-attention of the
    # instruction over the image tokens; no robot state, so it cannot answer "near the gripper",
    # which is right for most frames of a demonstration), "keypoints" (a spatial softmax per
    # position over the image grid, conditioned on the instruction: an expected image point,
    # finer than a cell) or "fused" (the fused tokens, state included: the third training run,
    # see docs/training_history.md).
    # "pixels": a separate small CNN on `keypoint_crop` of the model input at full resolution,
    # conditioned on the instruction (keypoints.py): a heat map per position, sub-pixel.
    position_from: str = "vision_language"
    # (top, left, bottom, right) fractions of the model input that the "pixels" detector sees:
    # the workspace (table, cubes, tray) of the scene camera, 96 x 192 px at 224 px. Each side
    # must come out a multiple of 4 px.
    keypoint_crop: list[float] = dataclasses.field(
        default_factory=lambda: [120 / 224, 16 / 224, 216 / 224, 208 / 224])
    keypoint_channels: int = 32  # width of the "pixels" detector
    # How the "pixels" detector reads a "tokens" instruction: "shared", one pooled vector
    # conditions the trunk that outputs both maps; "per_point", the target map and the place map
    # each get their own attention pool and their own pass through the conditioned blocks.
    # Why: a stack instruction names two colours, and with one vector for both maps the place
    # map latched onto a cube of neither colour in traces ("place the blue cube on the yellow
    # cube" found the red one; docs/training_history.md, eleventh session).
    detector_language: str = "shared"
    # --- dataset statistics (None: identity / defaults until `with_stats`)
    state_mean: Optional[list[float]] = None
    state_std: Optional[list[float]] = None
    action_mean: Optional[list[list[float]]] = None  # (action_horizon, 8)
    action_std: Optional[list[list[float]]] = None
    action_low: Optional[list[list[float]]] = None  # bin range of the discrete head
    action_high: Optional[list[list[float]]] = None
    position_mean: Optional[list[float]] = None  # position_aux targets (m), training split
    position_std: Optional[list[float]] = None
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        choices = {"vision_encoder": VISION_ENCODERS, "fusion": FUSIONS, "head": HEADS,
                   "head_arch": HEAD_ARCHS, "action_space": ACTION_SPACES,
                   "position_from": POSITION_SOURCES, "vision_stage": VISION_STAGES,
                   "language_input": LANGUAGE_INPUTS, "detector_language": DETECTOR_LANGUAGE}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        positive = ("image_size", "language_dim", "language_tokens", "d_model", "n_heads",
                    "fusion_layers", "head_layers", "action_horizon", "keypoints", "ffn_ratio",
                    "keypoint_channels", "language_max_tokens")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.image_size % 32 or self.image_size < 64:
            raise ValueError(
                f"image_size must be a multiple of 32 and >= 64, got {self.image_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not 0 <= self.vision_trainable_blocks <= 16:
            raise ValueError("vision_trainable_blocks must be in 0..16 (Lite0 has 16 blocks)")
        if self.vision_stage == "stride16" and (self.vision_trainable_blocks or
                                                self.vision_encoder != "efficientnet_lite0"):
            raise ValueError("vision_stage stride16 is the frozen Lite0 map: it needs "
                             "efficientnet_lite0 and vision_trainable_blocks 0")
        if not self.cnn_channels or any(int(c) < 1 for c in self.cnn_channels):
            raise ValueError("cnn_channels must be a non-empty list of positive integers")
        if self.position_token and not self.position_aux:
            raise ValueError("position_token needs position_aux (the head that predicts them)")
        if self.start_memory and not (self.position_token and self.action_space == "ee_delta"):
            raise ValueError("start_memory needs position_token and action_space ee_delta (it "
                             "adds to the position token's grasp-relative vectors)")
        if self.language_input == "tokens" and self.language_max_tokens < 2:
            raise ValueError("language_max_tokens must be >= 2 (the sentence row and [CLS])")
        if self.place_memory and not self.start_memory:
            raise ValueError("place_memory needs start_memory (it latches with the start)")
        if self.detector_language == "per_point" and not (
                self.language_input == "tokens" and self.position_aux
                and self.position_from == "pixels"):
            raise ValueError("detector_language per_point needs language_input tokens (one pool "
                             "per map) and position_aux with position_from pixels")
        if self.action_anchors and not (self.start_memory and self.head == "continuous"):
            raise ValueError("action_anchors needs start_memory (the anchors are the token's "
                             "positions) and the continuous head (it offsets regressed rows)")
        if not self.head_language and not (self.reads_skill and self.position_token
                                           and self.position_from == "pixels"):
            raise ValueError("head_language False needs skill_input or skill_heads (which motion), "
                             "position_token and position_from pixels (which cube and where: "
                             "the detector is then the only reader of the words)")
        if self.push_place not in PUSH_PLACES:
            raise ValueError(f"push_place={self.push_place!r} is not one of {list(PUSH_PLACES)}")
        if self.push_offsets is not None:
            self.push_offsets = {str(name): _vector(offset, 3, f"push_offsets[{name!r}]")
                                 for name, offset in dict(self.push_offsets).items()}
            unknown = sorted(set(self.push_offsets) - set(DIRECTIONS.values()))
            if unknown:  # the planner's directions are the only keys a skill can look up
                raise ValueError(f"push_offsets has directions {unknown} the planner never "
                                 f"gives (it gives {sorted(set(DIRECTIONS.values()))})")
        if not (math.isfinite(self.push_extra_m) and 0.0 <= self.push_extra_m <= 0.1):
            raise ValueError(f"push_extra_m must be in [0, 0.1] m, got {self.push_extra_m}")
        if self.push_offsets is not None and any(
                math.hypot(*offset) < 1e-3 for offset in self.push_offsets.values()):
            raise ValueError("push_offsets must point somewhere (each at least 1 mm long)")
        if self.cube_place not in CUBE_PLACES:
            raise ValueError(f"cube_place={self.cube_place!r} is not one of {list(CUBE_PLACES)}")
        if not (math.isfinite(self.cube_place_extra_ratio)
                and 0.0 <= self.cube_place_extra_ratio <= 0.5):
            raise ValueError("cube_place_extra_ratio must be in [0, 0.5], got "
                             f"{self.cube_place_extra_ratio}")
        if not (math.isfinite(self.inference_period_s) and 0.0 <= self.inference_period_s <= 2.0):
            raise ValueError(f"inference_period_s must be in [0, 2] s, got "
                             f"{self.inference_period_s}")
        if not (math.isfinite(self.action_lead_s) and 0.0 <= self.action_lead_s <= 1.0):
            raise ValueError(f"action_lead_s must be in [0, 1] s, got {self.action_lead_s}")
        if self.place_target not in PLACE_TARGETS:
            raise ValueError(f"place_target={self.place_target!r} is not one of "
                             f"{list(PLACE_TARGETS)}")
        if self.place_target != "model" and not (self.position_token
                                                 and self.action_space == "ee_delta"):
            raise ValueError(f"place_target {self.place_target} needs position_token (the "
                             "token it feeds) and action_space ee_delta (whose state carries "
                             "the grasp point)")
        if self.cube_place_view not in CUBE_PLACE_VIEWS:
            raise ValueError(f"cube_place_view={self.cube_place_view!r} is not one of "
                             f"{list(CUBE_PLACE_VIEWS)}")
        if self.cube_place_view != "place" and self.cube_place != "target_detector":
            raise ValueError("cube_place_view chooses the frames that cube_place "
                             "'target_detector' reads: set that too")
        if self.cube_place_extra_ratio and self.cube_place != "target_detector":
            raise ValueError("cube_place_extra_ratio moves the place that cube_place "
                             "'target_detector' latches: set that too")
        if self.cube_place == "target_detector" and not (
                self.place_memory and self.position_from == "pixels"):
            raise ValueError("cube_place 'target_detector' needs place_memory (it replaces the "
                             "latched place) and position_from 'pixels' (the detector it asks)")
        if self.push_place == "planned" and not self.place_memory:
            raise ValueError("push_place 'planned' needs place_memory (it replaces the latched "
                             "place)")
        if self.place_relative and not self.place_memory:
            raise ValueError("place_relative needs place_memory (it blends the latched place)")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 < self.done_threshold < 1.0:
            raise ValueError("dropout must be in [0, 1) and done_threshold in (0, 1)")
        if self.temporal_ensemble is not None and not (
                math.isfinite(self.temporal_ensemble) and self.temporal_ensemble >= 0):
            raise ValueError(
                f"temporal_ensemble must be None or >= 0, got {self.temporal_ensemble}")
        if not (math.isfinite(self.action_dt) and self.action_dt > 0):
            raise ValueError(f"action_dt must be > 0 s, got {self.action_dt}")
        if self.action_bins < 2:
            raise ValueError("action_bins must be >= 2")
        if len(self.joint_names) != ARM_DOF + 2 or len(set(self.joint_names)) != ARM_DOF + 2:
            raise ValueError("joint_names must name 7 arm joints then 2 fingers, all distinct")
        if self.image_crop is not None:
            top, left, bottom, right = (float(v) for v in self.image_crop)
            if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
                raise ValueError(f"image_crop {self.image_crop} is not (top, left, bottom, right)")
            self.image_crop = [top, left, bottom, right]
        top, left, bottom, right = (float(v) for v in self.keypoint_crop)
        if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
            raise ValueError(f"keypoint_crop {self.keypoint_crop} is not "
                             "(top, left, bottom, right)")
        self.keypoint_crop = [top, left, bottom, right]
        if self.position_aux and self.position_from == "pixels":
            height, width = self.keypoint_crop_size
            if height % 4 or width % 4 or min(height, width) < 16:
                raise ValueError(f"keypoint_crop is {height} x {width} px at image_size "
                                 f"{self.image_size}: each side must be a multiple of 4, >= 16")
        for first, second in (("state_mean", "state_std"), ("position_mean", "position_std")):
            if (getattr(self, first) is None) != (getattr(self, second) is None):
                raise ValueError(f"{first} and {second} come together")
        if self.state_mean is not None:
            self.state_mean = _vector(self.state_mean, self.state_dim, "state_mean")
            self.state_std = _vector(self.state_std, self.state_dim, "state_std")
        if self.position_mean is not None:
            self.position_mean = _vector(self.position_mean, POSITION_DIM, "position_mean")
            self.position_std = _vector(self.position_std, POSITION_DIM, "position_std")
        h = self.action_horizon
        for name in ("action_mean", "action_std", "action_low", "action_high"):
            if getattr(self, name) is not None:
                setattr(self, name, _matrix(getattr(self, name), h, self.action_dim, name))
        if (self.action_mean is None) != (self.action_std is None):
            raise ValueError("action_mean and action_std come together")
        if (self.action_low is None) != (self.action_high is None):
            raise ValueError("action_low and action_high come together")
        for name in ("state_std", "action_std", "position_std"):
            if getattr(self, name) is not None and min(min(r) if isinstance(r, list) else r
                                                      for r in getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.action_low is not None and any(
                lo >= hi for rl, rh in zip(self.action_low, self.action_high)
                for lo, hi in zip(rl, rh)):
            raise ValueError("action_low must be below action_high everywhere")

    # ------------------------------------------------------------------ sizes
    @property
    def reads_skill(self) -> bool:
        """Whether the forward needs the skill primitive (skill_input or skill_heads)."""
        return self.skill_input or self.skill_heads

    @property
    def action_dim(self) -> int:
        return EE_ACTION_DIM if self.action_space == "ee_delta" else ACTION_DIM

    @property
    def state_dim(self) -> int:
        return STATE_DIM + (EE_STATE_DIM if self.action_space == "ee_delta" else 0)

    @property
    def language_rows(self) -> int:
        """The `tokens` argument of encoders.TextEncoder: 0 for the sentence embedding."""
        return self.language_max_tokens if self.language_input == "tokens" else 0

    @property
    def language_shape(self) -> tuple[int, ...]:
        """One instruction's language input: (384,) or (language_max_tokens, 384)."""
        if self.language_rows:
            return (self.language_rows, self.language_dim)
        return (self.language_dim,)

    @property
    def keypoint_box(self) -> tuple[int, int, int, int]:
        """keypoint_crop in pixels of the model input: (top, left, bottom, right)."""
        size = self.image_size
        return tuple(int(round(f * size)) for f in self.keypoint_crop)

    @property
    def keypoint_crop_size(self) -> tuple[int, int]:
        top, left, bottom, right = self.keypoint_box
        return bottom - top, right - left

    # ------------------------------------------------------------------ statistics
    def normalisation(self) -> dict[str, list]:
        """Stats with defaults filled in: mean 0 std 1, bins at mean +- 3 std; positions in
        metres around the table (mean 0.5 m, std 0.1 m) until trained."""
        h, a = self.action_horizon, self.action_dim
        state_mean = self.state_mean or [0.0] * self.state_dim
        state_std = self.state_std or [1.0] * self.state_dim
        mean = self.action_mean or [[0.0] * a for _ in range(h)]
        std = self.action_std or [[1.0] * a for _ in range(h)]
        low = self.action_low or [[m - 3 * s for m, s in zip(rm, rs)] for rm, rs in zip(mean, std)]
        high = self.action_high or [[m + 3 * s for m, s in zip(rm, rs)]
                                    for rm, rs in zip(mean, std)]
        return {"state_mean": state_mean, "state_std": state_std, "action_mean": mean,
                "action_std": std, "action_low": low, "action_high": high,
                "position_mean": self.position_mean or [0.5] * POSITION_DIM,
                "position_std": self.position_std or [0.1] * POSITION_DIM}

    def with_stats(self, states: Any, actions: Any, positions: Any = None,
                   min_std: float = 1e-3, quantile: float = 0.005) -> "VLAConfig":
        """A copy with statistics of `states` (N, state_dim), `actions` (N, H, action_dim) in
        model units and, for position_aux, `positions` (N, 6).

        Bins of the discrete head span the [quantile, 1 - quantile] range of each (step, dim).
        """
        import numpy as np
        states = np.asarray(states, dtype=np.float64)
        actions = np.asarray(actions, dtype=np.float64)
        if states.ndim != 2 or states.shape[1] != self.state_dim:
            raise ValueError(f"states must be (N, {self.state_dim}), got {states.shape}")
        if actions.shape[1:] != (self.action_horizon, self.action_dim):
            raise ValueError(f"actions must be (N, {self.action_horizon}, {self.action_dim})")
        low = np.quantile(actions, quantile, axis=0)
        high = np.maximum(np.quantile(actions, 1.0 - quantile, axis=0), low + min_std)
        extra = {}
        if positions is not None:
            positions = np.asarray(positions, dtype=np.float64)
            extra = {"position_mean": positions.mean(0).tolist(),
                     "position_std": np.maximum(positions.std(0), min_std).tolist()}
        return dataclasses.replace(
            self, state_mean=states.mean(0).tolist(),
            state_std=np.maximum(states.std(0), min_std).tolist(),
            action_mean=actions.mean(0).tolist(),
            action_std=np.maximum(actions.std(0), min_std).tolist(),
            action_low=low.tolist(), action_high=high.tolist(), **extra)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: Optional[str | Path] = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        for name, default in REMOVED_FIELDS.items():
            if name in data and data.pop(name) != default:
                raise ValueError(f"{name} was removed after it did not help "
                                 f"(docs/training_history.md, fifteenth session): this "
                                 f"checkpoint sets it, so it needs the code of commit 1522412 "
                                 f"or earlier")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VLAConfig fields {unknown}")
        if data.get("version", CONFIG_VERSION) > CONFIG_VERSION:
            raise ValueError(f"config version {data['version']} is newer than this code")
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "VLAConfig":
        path = Path(text_or_path)
        text = path.read_text() if not str(text_or_path).lstrip().startswith("{") else text_or_path
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------------- action space (numpy)
def state_vector(joint_positions: Sequence[float]) -> Any:
    """(..., 9) joint positions -> (..., 8): 7 arm joints + gripper opening."""
    import numpy as np
    q = np.asarray(joint_positions, dtype=np.float64)
    return np.concatenate([q[..., :ARM_DOF], q[..., ARM_DOF:].mean(-1, keepdims=True)], -1)


def encode_actions(chunk_positions: Any, joint_positions: Any, action_space: str) -> Any:
    """(..., H, 9) absolute targets + (..., 9) measured joints -> (..., H, 8) model actions."""
    import numpy as np
    rows = state_vector(chunk_positions)
    if action_space == "joint_delta":
        q = np.asarray(joint_positions, dtype=np.float64)[..., None, :ARM_DOF]
        rows[..., :ARM_DOF] -= q
    return rows


def decode_actions(actions: Any, joint_positions: Any, action_space: str) -> Any:
    """(..., H, 8) model actions + (..., 9) measured joints -> (..., H, 9) absolute targets."""
    import numpy as np
    actions = np.asarray(actions, dtype=np.float64)
    arm = actions[..., :ARM_DOF].copy()
    if action_space == "joint_delta":
        arm += np.asarray(joint_positions, dtype=np.float64)[..., None, :ARM_DOF]
    gripper = np.clip(actions[..., ARM_DOF:], 0.0, 0.04)
    return np.concatenate([arm, gripper, gripper], -1)
