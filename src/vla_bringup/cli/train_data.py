"""Demonstration datasets for training: loading the LeRobot layout, and the labels made from it
(end-effector actions, executed chunks, keypoint targets) and the train / validation split.

No torch at import time; functions that build tensors import it themselves.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional

import numpy as np

POSITION_COLUMNS = ("privileged.target_position", "privileged.place_position")


class DatasetError(ValueError):
    """The dataset folder is missing, empty or malformed; the message says what and where."""




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
    # (N,) the skill primitive of each frame ("pick" | "place" | "push"); None for a dataset
    # without the column (a model that reads the primitive cannot be trained on it)
    skills: Optional[list[str]] = None
    # Several datasets read as one (load_datasets): each one and the index of its first episode
    # here. Empty for a single dataset. root and info are then the first one's.
    sources: list = dataclasses.field(default_factory=list)

    @property
    def chunk_dt(self) -> float:
        extra = self.info.get("vla_bringup", {})
        return float(extra.get("chunk_dt") or 1.0 / float(self.info["fps"]))

    @property
    def generator_config(self) -> dict:
        """The generator settings stored in meta/info.json (empty for an older dataset)."""
        return self.info.get("vla_bringup", {}).get("generator_config", {})

    def parts(self) -> list[tuple["Demos", int]]:
        """(dataset, index of its first episode here) for each dataset read into this one."""
        return self.sources or [(self, 0)]

    def _source_of(self, episode: int) -> tuple["Demos", int]:
        """The dataset that holds `episode`, and the episode's index in it."""
        for part, first in reversed(self.parts()):
            if episode >= first:
                return part, episode - first
        raise IndexError(episode)

    def image_path(self, episode: int, frame: int) -> Path:
        if self.sources:
            part, local = self._source_of(episode)
            return part.image_path(local, frame)
        return self.root / self.info["image_path"].format(episode_index=episode,
                                                          frame_index=frame)

    def episode_fingerprint(self, episode: int) -> str:
        """Changes when the episode (or a generator setting) changes; keys the caches.
        Settings at the generator's default are left out: a setting added to the generator
        later, at the default that keeps the old behaviour, is written into info.json by the
        next resumed run, and must not make every cached episode stale (it did: a resumed
        300-episode dataset re-encoded all 63 k frames, 25 min, instead of the new half)."""
        if self.sources:
            part, local = self._source_of(episode)
            return part.episode_fingerprint(local)
        defaults = generator_defaults()
        return self._fingerprint(episode, lambda k, v: k not in defaults or defaults[k] != v)

    def legacy_fingerprints(self, episode: int) -> tuple[str, str]:
        """The older form, which hashed every stored setting, as written by code with and
        without the settings added since (at their defaults): caches keyed so stay valid."""
        if self.sources:
            part, local = self._source_of(episode)
            return part.legacy_fingerprints(local)
        defaults = generator_defaults()
        return (self._fingerprint(episode, lambda k, v: True),
                self._fingerprint(episode, lambda k, v: k not in LATER_SETTINGS
                                  or defaults[k] != v))

    def _fingerprint(self, episode: int, keep) -> str:
        path = self.root / self.info["data_path"].format(
            episode_chunk=episode // int(self.info.get("chunks_size", 1000)),
            episode_index=episode)
        generator = {k: v for k, v in self.generator_config.items() if keep(k, v)}
        blob = json.dumps([self.episodes[episode], generator, path.stat().st_size],
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Generator settings added after the caches began to hash every stored setting (legacy form).
LATER_SETTINGS = ("inference_latency_s", "inference_period_s")


@functools.lru_cache(maxsize=1)
def generator_defaults() -> Mapping[str, Any]:
    """The generator's default settings, as info.json stores them (tuples as lists); built
    once (every episode's fingerprint reads them), read-only since it is shared."""
    from vla_bringup.sim.demonstrations import GeneratorConfig
    return MappingProxyType(GeneratorConfig().stored())


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
        if "skill" in table.column_names:
            parts.setdefault("skills", []).append(_column(table, "skill", path).to_pylist())
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
                 if len(parts.get("positions", [])) == len(lengths) else None,
                 [name for part in parts["skills"] for name in part]
                 if len(parts.get("skills", [])) == len(lengths) else None)


def load_datasets(roots) -> Demos:
    """One dataset, or several read as one: their frames and episodes follow each other in the
    order given (each keeps its own caches). They must agree on image size, rate, chunk timing
    and joints, and must not hold the same scene twice; DatasetError says which and where."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if not roots:
        raise DatasetError("no dataset folder given")
    resolved = [Path(r).resolve() for r in roots]
    if len(set(resolved)) < len(resolved):
        raise DatasetError(f"a dataset is named twice in {[str(r) for r in roots]}")
    parts = [load_dataset(r) for r in roots]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    reference = _dataset_shape(first)
    seen: dict[tuple, tuple[Path, int]] = {}
    for part in parts:
        shape = _dataset_shape(part)
        differ = sorted(k for k in reference if reference[k] != shape[k])
        if differ:
            raise DatasetError(
                f"{part.root} and {first.root} differ in {differ} ("
                + "; ".join(f"{k}: {shape[k]} vs {reference[k]}" for k in differ)
                + "): datasets trained on together must agree on these")
        for index, record in enumerate(part.episodes):
            scene = (record.get("seed"), record.get("family"), record.get("instruction"))
            if scene[0] is not None and scene in seen:
                other, other_index = seen[scene]
                raise DatasetError(
                    f"episode {index} of {part.root} repeats episode {other_index} of {other} "
                    f"(seed {scene[0]}, {scene[1]}): generate one of them with another "
                    "--seed-base")
            seen[scene] = (part.root, index)
    firsts = np.cumsum([0] + [len(p.episodes) for p in parts])[:-1]
    frame_starts = np.cumsum([0] + [int(p.offsets[-1]) for p in parts])[:-1]
    positions = [p.positions for p in parts]
    skills = [p.skills for p in parts]
    return Demos(
        first.root, first.info, [e for p in parts for e in p.episodes],
        np.concatenate([p.states for p in parts]), np.concatenate([p.chunks for p in parts]),
        np.concatenate([p.done for p in parts]), np.concatenate([p.progress for p in parts]),
        [t for p in parts for t in p.instructions],
        np.concatenate([p.episode_of + f for p, f in zip(parts, firsts)]),
        np.concatenate([p.offsets[:-1] + s for p, s in zip(parts, frame_starts)]
                       + [[frame_starts[-1] + parts[-1].offsets[-1]]]).astype(np.int64),
        None if any(x is None for x in positions) else np.concatenate(positions),
        None if any(x is None for x in skills) else [name for part in skills for name in part],
        sources=[(p, int(f)) for p, f in zip(parts, firsts)])


def _dataset_shape(demos: Demos) -> dict[str, Any]:
    """What two datasets trained on together must share: the labels and the caches depend on
    it. Families, scenes, perturbation and jitter may differ."""
    extra = demos.info.get("vla_bringup", {})
    return {"image": demos.info.get("features", {}).get("observation.image", {}).get("shape"),
            "fps": float(demos.info["fps"]), "chunk_dt": demos.chunk_dt,
            "chunk_horizon": int(demos.chunks.shape[1]),
            "joint_names": extra.get("joint_names")}


def _skill_starts(demos: Demos) -> np.ndarray:
    """(N,) bool: the frame opens a skill (a new episode, or the skill text changes)."""
    texts = np.asarray(demos.instructions, dtype=object)
    starts = np.ones(len(texts), dtype=bool)
    starts[1:] = (demos.episode_of[1:] != demos.episode_of[:-1]) | (texts[1:] != texts[:-1])
    return starts


def skill_start_targets(demos: Demos, with_place: bool = False) -> np.ndarray:
    """(N, 3) m: for each frame, the target object's position at the first frame of its skill
    (the label of a start_memory model's latched start); (N, 6) with the place position then
    (a place_memory model's latched place)."""
    if demos.positions is None:
        raise DatasetError("start_memory needs the privileged position columns")
    return demos.positions[skill_first_frames(demos), :6 if with_place else 3]


def push_offsets(demos: Demos, episodes) -> dict[str, list[float]]:
    """destination -> (3,) m: the mean offset from the target's start to the place over the
    push episodes among `episodes` (what a push_place "planned" model adds to its latched
    start). Empty without the privileged columns or without pushes."""
    if demos.positions is None:
        return {}
    found: dict[str, list[np.ndarray]] = {}
    for episode in episodes:
        meta = demos.episodes[episode]
        if meta.get("family") == "push":
            first = demos.positions[demos.offsets[episode]]
            found.setdefault(str(meta["destination"]), []).append(first[3:6] - first[:3])
    return {name: np.mean(offsets, 0).round(5).tolist() for name, offsets in sorted(found.items())}


def skill_first_frames(demos: Demos) -> np.ndarray:
    """(N,) int64: for each frame, the index of the first frame of its skill."""
    starts = _skill_starts(demos)
    return np.flatnonzero(starts)[np.cumsum(starts) - 1]


def held_frames_done(demos: Demos) -> tuple[np.ndarray, np.ndarray]:
    """(N,) done and (N,) progress with the frames held after each skill's done frame said
    done, progress 1.

    Why: the generator records done_hold_frames frames after the done frame, to show the
    policy what "finished" looks like. But it labels them with the expert's answer on them, and
    the expert judges done as "within a few mm of its last target": the arm drifts on by a few
    mm after the skill ends, and the expert then says "not done, progress 0.8" on most of them
    (9 of 12 push episodes of a fresh push dataset end done, not done, not done). The done head
    is so taught both answers on nearly the same frame.

    Only a skill's last done_hold_frames + 1 frames are looked at (from the first done frame
    among them; of datasets read as one, each with its own done_hold_frames): a pick said done
    earlier with empty fingers and then regrasped under the same text keeps its labels."""
    done, progress = demos.done.astype(bool).copy(), demos.progress.copy()
    default = generator_defaults()["done_hold_frames"]
    holds = {id(part): int(part.generator_config.get("done_hold_frames", default))
             for part, _ in demos.parts()}
    starts = np.flatnonzero(_skill_starts(demos))
    for first, end in zip(starts, np.append(starts[1:], len(done))):
        part, _ = demos._source_of(int(demos.episode_of[first]))  # its own dataset's setting
        hold = holds[id(part)]
        tail = max(first, end - hold - 1)
        said_done = np.flatnonzero(done[tail:end])
        if said_done.size:
            done[tail + said_done[0]:end] = True
            progress[tail + said_done[0]:end] = 1.0
    return done, progress


def executed_chunks(demos: Demos, horizon: int) -> np.ndarray:
    """(N, H, 9) chunk labels from what the expert went on to do: row k of frame t is the first
    row it planned at frame t + k; past the last frame e of the skill, the rows it planned at e.

    Why: the scripted expert re-plans every frame and each plan stays inside its current phase
    (it plans "descend, fingers open" until the grasp point is at the cube, and only then
    "close"). Its chunks never show the next phase, so a policy trained on them must hit that
    trigger exactly before its chunks say "close"; a policy that stops just short of it waits
    forever. Executed chunks carry the coming grasp, release or push into the rows before it
    (the chunk labels of ACT-style datasets: the actions actually taken next).
    """
    count, planned = len(demos.chunks), demos.chunks.shape[1]
    if planned < horizon:
        raise DatasetError(f"chunks hold {planned} rows, {horizon} wanted")
    starts = _skill_starts(demos)
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
        bar = progress_bar(len(chunks), "end-effector labels", progress, "frame")
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


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "it"):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)
