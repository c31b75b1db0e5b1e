"""Training on several datasets as one (`train --data A B`): tiny push datasets at 64 px.

What must hold: the combined dataset's frames and episodes follow each other in order and each
frame still reads its own image; each dataset keeps (and reuses) its own caches, so adding a
second one encodes only its frames; datasets that cannot be mixed are refused with a message.
"""
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla_bringup.cli import train as train_cli
from vla_bringup.cli.train_data import DatasetError, held_frames_done, load_datasets
from vla_bringup.sim.demonstrations import GeneratorConfig, generate

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_MODEL = {"image_size": 64, "d_model": 32, "n_heads": 2, "fusion_layers": 1,
              "head_layers": 1, "keypoints": 4, "language_tokens": 2,
              "position_aux": True, "position_from": "pixels",
              "keypoint_crop": [0.5, 0.25, 1.0, 1.0], "keypoint_channels": 8}
TINY_TRAIN = {"steps": 2, "batch": 8, "val_every": 2, "warmup_steps": 1}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("several")
    roots = []
    for name, seed_base in (("first", 0), ("second", 500)):
        config = GeneratorConfig(image_size=64, families=("push",), done_hold_frames=1,
                                 seed_base=seed_base)
        assert generate(base / name, 2, config, progress=False)["episodes"] == 2
        roots.append(base / name)
    return roots


def _train(data, out, cache_dir=None):
    config = train_cli.TrainConfig(**TINY_TRAIN)
    return train_cli.train(data, out, dict(TINY_MODEL), config, cache_dir, progress=False,
                           log=lambda *a: None)


def test_combined_dataset_keeps_each_frame_with_its_own_episode(datasets):
    first, second = (load_datasets(root) for root in datasets)
    both = load_datasets(datasets)
    frames = int(first.offsets[-1])
    assert len(both.episodes) == 4 and int(both.offsets[-1]) == frames + int(second.offsets[-1])
    np.testing.assert_array_equal(both.states[frames:], second.states)
    np.testing.assert_array_equal(both.offsets[2:], second.offsets + frames)
    assert list(both.episode_of[frames:frames + 2]) == [2, 2]
    assert both.instructions[frames:] == second.instructions
    assert both.image_path(3, 1) == second.image_path(1, 1)
    assert both.image_path(1, 1) == first.image_path(1, 1)
    assert both.episode_fingerprint(2) == second.episode_fingerprint(0)
    assert [p.root for p, _ in both.parts()] == list(datasets)
    assert [f for _, f in both.parts()] == [0, 2]


def test_each_dataset_keeps_its_caches_and_adding_one_encodes_only_its_frames(datasets, tmp_path):
    for root in datasets:
        shutil.rmtree(root / "cache", ignore_errors=True)
    alone = _train(datasets[0], tmp_path / "alone")
    both = _train(datasets, tmp_path / "both")
    first_frames = alone["dataset"]["frames"]
    assert both["cache"]["vision_reused_frames"] == first_frames
    assert both["cache"]["vision_computed_frames"] == both["dataset"]["frames"] - first_frames
    assert any((datasets[1] / "cache").glob("vision-*/episode_000001.npy"))
    assert any((datasets[1] / "cache").glob("keypoint-crops-*.npy"))
    parts = both["dataset"]["parts"]
    assert [p["episodes"] for p in parts] == [2, 2]
    assert [p["first_episode"] for p in parts] == [0, 2]
    assert len(both["dataset"]["train_episodes"]) + len(both["dataset"]["val_episodes"]) == 4
    assert all(np.isfinite(h["loss"]) for h in both["history"])
    assert (tmp_path / "both" / "model.safetensors").is_file()

    # The combined caches hold exactly what each dataset's own cache holds, in order.
    from vla_bringup.policy.vla.config import VLAConfig
    from vla_bringup.policy.vla.model import VLAModel
    model = VLAModel(VLAConfig(**TINY_MODEL))
    combined = load_datasets(datasets)
    every = list(range(4))
    features = train_cli.cache_vision_features(combined, model, every, 8, progress=False)
    crops = train_cli.cache_keypoint_crops(combined, model, every, progress=False)
    assert features["computed_frames"] == 0
    single = [load_datasets(root) for root in datasets]
    np.testing.assert_array_equal(features["features"], np.concatenate(
        [train_cli.cache_vision_features(d, model, [0, 1], 8, progress=False)["features"]
         for d in single]))
    np.testing.assert_array_equal(crops, np.concatenate(
        [train_cli.cache_keypoint_crops(d, model, [0, 1], progress=False) for d in single]))


def test_a_shared_cache_dir_gives_each_dataset_a_folder(datasets, tmp_path):
    log = _train(datasets, tmp_path / "run", cache_dir=tmp_path / "cache")
    folders = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert [f.split("-")[0] for f in folders] == ["first", "second"]
    assert log["cache"]["vision_computed_frames"] == log["dataset"]["frames"]


def test_datasets_that_cannot_be_mixed_are_refused(datasets, tmp_path, capsys):
    with pytest.raises(DatasetError, match="named twice"):
        load_datasets([datasets[0], datasets[0]])
    copy = tmp_path / "copy"
    shutil.copytree(datasets[0], copy, ignore=shutil.ignore_patterns("cache"))
    with pytest.raises(DatasetError, match=r"episode 0 of .*copy repeats episode 0 of .*first "
                                           r"\(seed 0, push\).*--seed-base"):
        load_datasets([datasets[0], copy])
    info_path = copy / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["fps"] = 20.0
    info["vla_bringup"]["chunk_dt"] = 0.05
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"differ in \['chunk_dt', 'fps'\]"):
        load_datasets([datasets[0], copy])
    # The command line says so and exits 2, before any training.
    code = train_cli.main(["--data", str(datasets[0]), str(datasets[0]), "--out",
                           str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and "named twice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _last_frame_says_not_done(root) -> None:
    """Each episode's last frame says "not done, progress 0.8", as the expert often does on a
    held frame after the done one."""
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        done, progress = table["skill_done"].to_pylist(), table["progress"].to_pylist()
        assert done[-2:] == [True, True]
        done[-1], progress[-1] = False, 0.8
        for name, values in (("skill_done", done), ("progress", progress)):
            field = table.schema.field(name)
            table = table.set_column(table.schema.get_field_index(name), field,
                                     pa.array(values, field.type))
        pq.write_table(table, path)


def test_held_frames_are_labelled_with_each_datasets_own_hold(datasets, tmp_path):
    # Both datasets end each episode "done, not done". The first keeps its hold of 1 frame: its
    # last frame follows the done frame before it. The second is marked as recorded with no
    # hold: its last frame is the whole tail and keeps its label.
    copies = [tmp_path / "hold_1", tmp_path / "hold_0"]
    for source, copy in zip(datasets, copies):
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("cache"))
        _last_frame_says_not_done(copy)
    info_path = copies[1] / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["vla_bringup"]["generator_config"]["done_hold_frames"] = 0
    info_path.write_text(json.dumps(info))
    both = load_datasets(copies)
    done, progress = held_frames_done(both)
    alone = [held_frames_done(load_datasets(copy)) for copy in copies]
    np.testing.assert_array_equal(done, np.concatenate([d for d, _ in alone]))
    np.testing.assert_array_equal(progress, np.concatenate([p for _, p in alone]))
    last_frames = both.offsets[1:] - 1
    second = both.parts()[1][1]  # the second dataset's first episode
    assert done[last_frames[:second]].all() and np.all(progress[last_frames[:second]] == 1.0)
    assert not done[last_frames[second:]].any()
    assert np.allclose(progress[last_frames[second:]], 0.8)
