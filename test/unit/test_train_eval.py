"""Training and evaluation CLIs at tiny scale: 2 push episodes at 64 px, a few steps, 1 seed.

Checks the pipeline, not the policy's quality: the checkpoint loads and drives `VLAPolicy`, the
artifacts exist, the feature cache is reused, a seed reproduces its losses, bad datasets fail
clearly, and `evaluate` writes eval.json with the expert succeeding on the same seed.
"""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from vla_bringup.cli import evaluate as evaluate_cli
from vla_bringup.sim import demonstrations
from vla_bringup.core.skill_executor import GraspCheck, SkillTiming
from vla_bringup.cli import train as train_cli
from vla_bringup.cli.train_cache import cache_language
from vla_bringup.policy.vla.paraphrase import paraphrases
from vla_bringup.policy.base import Observation, SkillSpec
from vla_bringup.policy.vla.backend import VLAPolicy
from vla_bringup.policy.vla.model import load_checkpoint
from vla_bringup.sim.demonstrations import (EVAL_SEED_BASE, VALIDATION_SEED_BASE, GeneratorConfig,
                                           generate)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_MODEL = {"image_size": 64, "d_model": 32, "n_heads": 2, "fusion_layers": 1,
              "head_layers": 1, "keypoints": 4, "language_tokens": 2}
TINY_TRAIN = {"steps": 5, "batch": 8, "val_every": 2, "warmup_steps": 1}


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_eval") / "demos"
    config = GeneratorConfig(image_size=64, families=("push",), done_hold_frames=1)
    summary = generate(root, 2, config, progress=False)
    assert summary["episodes"] == 2
    return root


def _train(demos, out, **train_overrides):
    config = train_cli.TrainConfig(**{**TINY_TRAIN, **train_overrides})
    return train_cli.train(demos, out, dict(TINY_MODEL), config, progress=False,
                           log=lambda *a: None)


def _infer_once(model):
    """One chunk from the checkpoint's policy on a blank frame at the home pose."""
    policy = VLAPolicy(model=model, device="cpu")
    skill = SkillSpec("s0", "push", "push the red cube to the left", "red_cube", "left")
    policy.reset(skill)
    joints = np.array([0.0, -0.4, 0.0, -2.4, 0.0, 2.0, np.pi / 4, 0.04, 0.04])
    image = np.zeros((model.config.image_size,) * 2 + (3,), dtype=np.uint8)
    return policy.infer(Observation(0.0, list(model.config.joint_names), joints, skill, image))


@pytest.fixture(scope="module")
def trained(demos, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    shutil.rmtree(demos / "cache", ignore_errors=True)
    first = _train(demos, base / "first")
    second = _train(demos, base / "second")
    return base / "first", first, second


def test_training_writes_a_loadable_checkpoint_and_its_artifacts(trained):
    folder, log, _ = trained
    for name in ("config.json", "model.safetensors", "loss.png", "train_log.json"):
        assert (folder / name).is_file(), name
    stored = json.loads((folder / "train_log.json").read_text())
    assert len(stored["history"]) == 5 and stored["val_history"]
    assert stored["dataset"]["episodes"] == 2
    assert len(stored["dataset"]["train_episodes"]) == 1 == len(stored["dataset"]["val_episodes"])
    assert stored["best"]["step"] in [v["step"] for v in stored["val_history"]]
    assert set(stored["phases_s"]) >= {"load dataset", "vision features", "training"}
    assert all(np.isfinite(h["loss"]) for h in stored["history"])

    model = load_checkpoint(folder)
    assert model.config.state_mean is not None and model.config.action_dt == pytest.approx(0.1)
    chunk = _infer_once(model)
    assert chunk.positions.shape == (16, 9) and np.all(np.isfinite(chunk.positions))


def test_feature_cache_is_reused_and_a_seed_reproduces_its_losses(trained):
    _, first, second = trained
    frames = first["dataset"]["frames"]
    assert first["cache"]["vision_computed_frames"] == frames
    assert second["cache"]["vision_computed_frames"] == 0
    assert second["cache"]["vision_reused_frames"] == frames
    assert second["cache"]["language_computed"] == 0
    assert second["phases_s"]["vision features"] < first["phases_s"]["vision features"]
    assert [h["loss"] for h in second["history"]] == [h["loss"] for h in first["history"]]
    assert second["final_train_loss"] == first["final_train_loss"]
    assert second["val_history"] == first["val_history"]


def test_another_seed_gives_other_losses(demos, tmp_path):
    other = _train(demos, tmp_path / "other", steps=2, seed=1)
    reference = _train(demos, tmp_path / "reference", steps=2, seed=0)
    assert other["history"][-1]["loss"] != reference["history"][-1]["loss"]


def test_snapshots_keep_each_validated_step_and_keep_chooses_best_or_last(demos, tmp_path,
                                                                            monkeypatch):
    # Validation passes at steps 2, 4 and 5 (the end), with scripted losses so that the best
    # pass (step 4) is not the last one.
    def run(name, **overrides):
        scripted = iter([3.0, 1.0, 2.0])
        monkeypatch.setattr(train_cli, "_validate", lambda *_: {"loss": next(scripted)})
        return _train(demos, tmp_path / name, **overrides)

    log = run("best", snapshot_from=1)
    snapshots = tmp_path / "best" / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == ["step_2", "step_4", "step_5"]
    assert log["best"]["step"] == 4 == log["kept_step"]
    assert _same_weights(tmp_path / "best", snapshots / "step_4")
    assert not _same_weights(tmp_path / "best", snapshots / "step_5")
    assert np.all(np.isfinite(_infer_once(load_checkpoint(snapshots / "step_5")).positions))

    log = run("last", snapshot_from=3, keep="last")
    snapshots = tmp_path / "last" / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == ["step_4", "step_5"]
    assert log["best"]["step"] == 4 and log["kept_step"] == 5
    assert _same_weights(tmp_path / "last", snapshots / "step_5")
    assert not _same_weights(tmp_path / "last", snapshots / "step_4")
    for wrong in (-1, True, 2.5):
        with pytest.raises(ValueError, match="snapshot_from"):
            train_cli.TrainConfig(snapshot_from=wrong)
    with pytest.raises(ValueError, match="keep"):
        train_cli.TrainConfig(keep="first")


def _same_weights(first, second) -> bool:
    """Whether two checkpoint folders hold equal tensors (not bytes: safetensors writes its
    header's metadata in no fixed order)."""
    from safetensors.torch import load_file
    one, other = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    return one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def test_position_aux_trains_on_the_privileged_positions_and_loads(demos, tmp_path):
    config = train_cli.TrainConfig(**{**TINY_TRAIN, "steps": 3})
    log = train_cli.train(demos, tmp_path / "aux", {**TINY_MODEL, "position_aux": True}, config,
                          progress=False, log=lambda *a: None)
    assert all(np.isfinite(h["position"]) and h["position"] > 0 for h in log["history"])
    assert all(h["loss"] > h["action"] for h in log["history"])
    model = load_checkpoint(tmp_path / "aux")
    assert model.config.position_aux and model.position_head is not None
    assert model.position_grounding is not None  # the default source: instruction over image
    demos_loaded = train_cli.load_dataset(demos)
    assert demos_loaded.positions.shape == (len(demos_loaded.states), 6)


def test_position_token_reads_the_predicted_or_the_oracle_positions(demos, tmp_path):
    from vla_bringup.policy.vla.config import VLAConfig
    with pytest.raises(ValueError, match="position_token needs position_aux"):
        VLAConfig(position_token=True)
    model_overrides = {**TINY_MODEL, "position_aux": True, "position_token": True}
    with pytest.raises(ValueError, match="oracle_positions needs"):
        train_cli.train(demos, tmp_path / "x", dict(TINY_MODEL),
                        train_cli.TrainConfig(**{**TINY_TRAIN, "oracle_positions": True}),
                        progress=False, log=lambda *a: None)
    for oracle in (False, True):
        config = train_cli.TrainConfig(**{**TINY_TRAIN, "steps": 2, "oracle_positions": oracle})
        out = tmp_path / f"token-{oracle}"
        log = train_cli.train(demos, out, dict(model_overrides), config, progress=False,
                              log=lambda *a: None)
        assert all(np.isfinite(h["loss"]) for h in log["history"])
        model = load_checkpoint(out)
        assert model.position_proj is not None  # and inference runs on predicted positions:
        assert np.all(np.isfinite(_infer_once(model).positions))


def test_token_language_model_trains_from_its_own_cache(demos, tmp_path):
    with pytest.raises(ValueError, match="language_dropout"):
        train_cli.TrainConfig(language_dropout=1.0)
    with pytest.raises(ValueError, match="instruction_variants"):
        train_cli.TrainConfig(instruction_variants=-1)
    for bad in ({"reworded_fraction": 0.5}, {"instruction_variants": 2, "reworded_fraction": 1.5},
                {"instruction_variants": 2, "reworded_fraction": True}):
        with pytest.raises(ValueError, match="reworded_fraction"):
            train_cli.TrainConfig(**bad)
    with pytest.raises(ValueError, match="language_dropout needs"):  # a sentence model
        _train(demos, tmp_path / "sentence", language_dropout=0.3)
    # The committed recipe's shape: tokens, the pixel detector, latched start and place, the
    # relative place, token rows dropped and instructions reworded while training, and a
    # family repeated.
    config = train_cli.TrainConfig(**{**TINY_TRAIN, "steps": 2, "language_dropout": 0.3,
                                      "instruction_variants": 3, "family_repeat": {"push": 2}})
    overrides = {**TINY_MODEL, "language_input": "tokens", "language_max_tokens": 12,
                 "action_space": "ee_delta", "position_aux": True, "position_token": True,
                 "position_from": "pixels", "keypoint_crop": [0.5, 0.25, 1.0, 1.0],
                 "keypoint_channels": 8, "start_memory": True, "place_memory": True,
                 "place_relative": True}
    log = train_cli.train(demos, tmp_path / "tokens", overrides, config, progress=False,
                          log=lambda *a: None)
    assert all(np.isfinite(h["loss"]) for h in log["history"])
    stored = np.load(demos / "cache" / "language-minilm-sentence+tokens12.npz")
    assert stored["embeddings"].shape[1:] == (12, 384)
    # The rewordings were encoded too, but the log counts the dataset's own instructions.
    originals = set(train_cli.load_dataset(demos).instructions)
    assert len(stored["texts"]) > len(originals) == log["dataset"]["distinct_instructions"]
    # Column 0 is each text itself, the others only its rewordings (none left over).
    table = cache_language(train_cli.load_dataset(demos), None, 12, 3)
    assert table["computed"] == 0  # all cached by the training above
    for own in set(table["index"].tolist()):
        text, row = table["texts"][own], table["variants"][own]
        assert row[0] == own
        if paraphrases(text, 3):
            assert own not in row[1:]
    counts = log["dataset"]
    assert counts["train_frames"] + counts["val_frames_used"] <= counts["frames"]
    model = load_checkpoint(tmp_path / "tokens")
    assert model.language_pool is not None and model.place_blend is not None
    assert np.all(np.isfinite(_infer_once(model).positions))


def test_reworded_fraction_sets_how_often_an_example_reads_a_rewording():
    import torch
    # Two texts (rows 0 and 1), each with three rewordings; column 0 is the text itself.
    variants = torch.tensor([[0, 2, 3, 4], [1, 5, 6, 7]])
    own = torch.tensor([0, 1] * 2000)
    torch.manual_seed(0)
    assert torch.equal(train_cli._reworded_rows(own, variants, 0.0), own)
    always = train_cli._reworded_rows(own, variants, 1.0)
    assert torch.all((always >= 2) & (always != own))
    assert set(always[own == 1].tolist()) == {5, 6, 7}  # only the text's own rewordings
    share = (train_cli._reworded_rows(own, variants, 0.3) != own).float().mean().item()
    assert 0.25 < share < 0.35
    uniform = (train_cli._reworded_rows(own, variants, None) == own).float().mean().item()
    assert 0.2 < uniform < 0.3  # the text is one of four equal choices


def test_a_setting_added_at_its_default_leaves_cached_features_valid(demos, tmp_path):
    """A resumed generator writes settings added since the dataset began into info.json; at
    their defaults they must not make the cached features stale, nor must the caches that
    older code keyed on every stored setting."""
    copy = tmp_path / "demos"
    shutil.copytree(demos, copy, ignore=shutil.ignore_patterns("cache"))
    info_path = copy / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    settings = info["vla_bringup"]["generator_config"]
    current = train_cli.load_dataset(copy)
    # The dataset as written before the latest settings existed.
    for name in train_cli.LATER_SETTINGS:
        settings.pop(name)
    info_path.write_text(json.dumps(info))
    older = train_cli.load_dataset(copy)
    assert older.episode_fingerprint(0) == current.episode_fingerprint(0)
    assert older.legacy_fingerprints(0)[0] != current.legacy_fingerprints(0)[0]
    assert older.legacy_fingerprints(0)[0] == current.legacy_fingerprints(0)[1]
    first = _train(copy, tmp_path / "first")
    assert first["cache"]["vision_computed_frames"] > 0
    # Older code keyed the cache on every setting the info.json of that time held.
    index_path = next((copy / "cache").glob("vision-*/index.json"))
    index = json.loads(index_path.read_text())
    count = len(older.episodes)
    index["episodes"] = {str(e): older.legacy_fingerprints(e)[0] for e in range(count)}
    index_path.write_text(json.dumps(index))
    # A resumed generator (same settings) writes the later ones back, at their defaults.
    for name in train_cli.LATER_SETTINGS:
        settings[name] = dataclasses.asdict(GeneratorConfig())[name]
    info_path.write_text(json.dumps(info))
    second = _train(copy, tmp_path / "second")
    assert second["cache"]["vision_computed_frames"] == 0
    assert json.loads(index_path.read_text())["episodes"] == {
        str(e): current.episode_fingerprint(e) for e in range(count)}
    # The keypoint crops' single file, keyed by older code's fingerprints, is renamed, not
    # recomputed.
    from vla_bringup.policy.vla.config import VLAConfig
    from vla_bringup.policy.vla.model import VLAModel
    pixels = VLAModel(VLAConfig(**TINY_MODEL, position_aux=True, position_from="pixels",
                                keypoint_crop=[0.5, 0.25, 1.0, 1.0]), pretrained=False)
    episodes = list(range(count))
    legacy_view = train_cli.load_dataset(copy)
    legacy_view.episode_fingerprint = lambda e: legacy_view.legacy_fingerprints(e)[1]
    crops = train_cli.cache_keypoint_crops(legacy_view, pixels, episodes, progress=False)
    written = list((copy / "cache").glob("keypoint-crops-*.npy"))
    again = train_cli.cache_keypoint_crops(current, pixels, episodes, progress=False)
    kept = list((copy / "cache").glob("keypoint-crops-*.npy"))
    assert len(written) == 1 == len(kept) and written != kept
    np.testing.assert_array_equal(again, crops)
    # A setting that changes what was recorded still makes the episodes stale.
    settings["camera_jitter_m"] = 0.05
    info_path.write_text(json.dumps(info))
    assert train_cli.load_dataset(copy).episode_fingerprint(0) != current.episode_fingerprint(0)


def test_a_bool_is_not_a_count():
    for name in ("steps", "batch", "val_every", "threads"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            train_cli.TrainConfig(**{name: True})


def test_a_non_finite_validation_loss_stops_training_clearly(demos, tmp_path, monkeypatch):
    monkeypatch.setattr(train_cli, "_validate", lambda *args: {"loss": float("nan")})
    with pytest.raises(FloatingPointError, match="validation loss is nan at step 2"):
        _train(demos, tmp_path / "nan")
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_bad_datasets_fail_clearly(tmp_path, capsys):
    out = tmp_path / "out"
    assert train_cli.main(["--data", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "meta").mkdir(parents=True)
    assert train_cli.main(["--data", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "meta/info.json is missing" in capsys.readouterr().err
    (tmp_path / "empty" / "meta" / "info.json").write_text(json.dumps(
        {"data_path": "x", "image_path": "y", "fps": 10, "features": {}}))
    assert train_cli.main(["--data", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no episodes" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()


def test_a_dataset_with_a_missing_file_is_refused(demos, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(demos, broken, ignore=shutil.ignore_patterns("cache"))
    next(broken.glob("data/chunk-000/episode_000001.parquet")).unlink()
    with pytest.raises(train_cli.DatasetError, match="episode 1"):
        train_cli.load_dataset(broken)


def _rewrite_skill_column(root, values_of) -> None:
    """Replace (values_of returns a list) or drop (None) each episode's skill column in place."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    for path in sorted(root.glob("data/chunk-000/*.parquet")):
        table = pq.read_table(path).drop_columns(["skill"])
        values = values_of(table.num_rows)
        if values is not None:
            table = table.append_column("skill", pa.array(values))
        pq.write_table(table, path)


@pytest.mark.parametrize("option", ["skill_input", "skill_heads"])
def test_a_model_that_reads_the_primitive_trains_on_each_frames_own(option, demos, tmp_path,
                                                                    monkeypatch):
    from vla_bringup.policy.base import SKILLS
    from vla_bringup.policy.vla.model import VLAModel
    assert set(train_cli.load_dataset(demos).skills) == {"push"}  # the fixture's one family
    # Mixed primitives, frame by frame, so that a misaligned or constant index would show.
    mixed = tmp_path / "mixed"
    shutil.copytree(demos, mixed, ignore=shutil.ignore_patterns("cache"))
    _rewrite_skill_column(mixed, lambda rows: [SKILLS[i % 3] for i in range(rows)])
    skills = train_cli.load_dataset(mixed).skills
    asked, given = [], []
    losses, forward = train_cli._losses, VLAModel.forward

    def asking(model, tensors, idx, *args, **kwargs):
        asked.append([SKILLS.index(skills[i]) for i in idx])
        return losses(model, tensors, idx, *args, **kwargs)

    def reading(self, *args, skill=None, **kwargs):
        given.append(None if skill is None else skill.tolist())
        return forward(self, *args, skill=skill, **kwargs)
    monkeypatch.setattr(train_cli, "_losses", asking)
    monkeypatch.setattr(VLAModel, "forward", reading)
    config = train_cli.TrainConfig(**{**TINY_TRAIN, "steps": 2})
    log = train_cli.train(mixed, tmp_path / "skill", {**TINY_MODEL, option: True}, config,
                          progress=False, log=lambda *a: None)
    monkeypatch.undo()
    assert all(np.isfinite(h["loss"]) for h in log["history"])
    assert asked and given == asked  # training and validation batches alike
    assert any(len(set(batch)) > 1 for batch in asked)
    model = load_checkpoint(tmp_path / "skill")
    assert getattr(model.config, option) and np.all(np.isfinite(_infer_once(model).positions))


def test_a_dataset_without_known_primitives_cannot_train_a_skill_input_model(demos, tmp_path):
    config = train_cli.TrainConfig(**{**TINY_TRAIN, "steps": 2})

    def refused(root, message):
        with pytest.raises(train_cli.DatasetError, match=message):
            train_cli.train(root, tmp_path / "out", {**TINY_MODEL, "skill_input": True}, config,
                            progress=False, log=lambda *a: None)
        assert not (root / "cache").exists()  # said before any cache was built
    old, odd = tmp_path / "old", tmp_path / "odd"
    for root in (old, odd):
        shutil.copytree(demos, root, ignore=shutil.ignore_patterns("cache"))
    _rewrite_skill_column(old, lambda rows: None)
    assert train_cli.load_dataset(old).skills is None
    refused(old, "skill_input / skill_heads need the column 'skill', which .*old.* lack")
    _rewrite_skill_column(odd, lambda rows: ["push"] * (rows - 1) + ["wave"])
    refused(odd, "odd: the column 'skill' holds unknown skill primitives \\['wave'\\]")
    # Read with another dataset, the one that lacks it is named, not the first.
    with_column = train_cli.load_dataset(demos)
    together = dataclasses.replace(with_column, sources=[(with_column, 0),
                                                         (train_cli.load_dataset(old), 2)])
    with pytest.raises(train_cli.DatasetError, match="'skill', which [^,]*old lacks"):
        train_cli.skill_tensor(together)


def _record_release_checks(monkeypatch) -> list:
    """The release check each episode gets (one worker: the episodes run in this process)."""
    checks, run_episode = [], demonstrations.run_episode

    def recording(*args, **kwargs):
        checks.append(kwargs.get("release_check"))
        return run_episode(*args, **kwargs)
    monkeypatch.setattr(demonstrations, "run_episode", recording)
    return checks


def test_evaluate_writes_the_report_with_the_expert_as_upper_bound(trained, tmp_path,
                                                                    monkeypatch):
    folder, _, _ = trained
    released = _record_release_checks(monkeypatch)
    out = tmp_path / "eval"
    code = evaluate_cli.main(["--checkpoint", str(folder), "--seeds", "1", "--families", "push",
                              "--out", str(out), "--skill-timeout", "10", "--no-progress"])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert (out / "eval_table.png").stat().st_size > 0
    assert report["families"] == ["push"] and report["phrasings"] == ["train", "held_out"]
    assert report["seeds"] == {"base": EVAL_SEED_BASE, "count": 1, "list": [EVAL_SEED_BASE],
                               "validation": False, "note": report["seeds"]["note"]}
    assert report["checkpoint"]["sha256"] and report["machine"]["cpu_count"]
    assert report["timing"]["wall_s"] > 0 and report["sim_config"]["image_size"] == 64
    assert report["release_check"] is True and report["regrasp_attempts"] == 2
    assert len(released) == 3 and all(isinstance(c, GraspCheck) for c in released)
    for phrasing in ("train", "held_out"):
        cell = report["results"]["push"][phrasing]
        assert cell["policy"]["episodes"] == 1 and cell["expert"]["episodes"] == 1
        assert 0.0 <= cell["policy"]["success_rate"] <= 1.0  # no claim about a 5-step policy
        assert cell["expert"]["success_rate"] == 1.0
    policy = [e for e in report["episodes"] if e["backend"] == "policy"]
    assert {e["phrasing"] for e in policy} == {"train", "held_out"}
    assert {e["seed"] for e in report["episodes"]} == {EVAL_SEED_BASE}
    held_out = next(e for e in policy if e["phrasing"] == "held_out")
    seen = next(e for e in policy if e["phrasing"] == "train")
    assert held_out["skills"] != seen["skills"]  # the paraphrase reached the policy
    assert report["crashed_episodes"] == 0
    for phrasing in ("train", "held_out"):
        failures = report["results"]["push"][phrasing]["policy"]["failures"]
        cell = report["results"]["push"][phrasing]["policy"]
        assert sum(failures.values()) == cell["episodes"] - cell["successes"]
    assert all("task_met_at_failure" in e for e in report["episodes"])
    # A push has no place: nothing is release-checked, so no done can have been ignored.
    assert all(e["dones_while_holding"] == 0 for e in report["episodes"])
    expert = [e for e in report["episodes"] if e["backend"] == "expert"]
    assert all(e["measures"]["pushed_m"] >= 0.08 for e in expert)  # what the check compared


def test_evaluate_without_the_expert_runs_only_the_policy(trained, tmp_path):
    folder, _, _ = trained
    out = tmp_path / "eval"
    code = evaluate_cli.main(["--checkpoint", str(folder), "--seeds", "1", "--families", "push",
                              "--phrasings", "train", "--out", str(out), "--skill-timeout", "10",
                              "--no-expert", "--no-progress"])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert [e["backend"] for e in report["episodes"]] == ["policy"]
    assert report["results"]["push"]["train"]["expert"]["episodes"] == 0
    assert report["expert"]["runs"].startswith("not run")
    header, rows = evaluate_cli.table_rows(report["results"], ["push"], ["train"])
    assert header == ["task", "policy, seen phrasings"] and len(rows[0]) == 2
    assert (out / "eval_table.png").stat().st_size > 0
    assert evaluate_cli.main(["--checkpoint", str(folder), "--seeds", "1", "--out", str(out),
                              "--no-expert", "--expert-per-phrasing", "--no-progress"]) == 2


def test_failures_are_told_apart_by_kind():
    episodes = [{"success": True, "crashed": False, "task_met_at_failure": None},
                {"success": False, "crashed": False, "task_met_at_failure": True},
                {"success": False, "crashed": False, "task_met_at_failure": True},
                {"success": False, "crashed": False, "task_met_at_failure": False},
                {"success": False, "crashed": False, "task_met_at_failure": None},
                {"success": False, "crashed": True, "task_met_at_failure": None}]
    assert evaluate_cli.failure_kinds(episodes) == {
        "task_met_not_done": 2, "skill_failed": 1, "task_check": 1, "crashed": 1}
    # Medians over failures only; an episode that crashed has no measures and is left out.
    for episode, pushed in zip(episodes[:5], (0.12, 0.07, 0.05, 0.01, 0.06)):
        episode["measures"] = {"pushed_m": pushed, "target_moved_m": abs(pushed)}
    assert evaluate_cli.failure_measures(episodes) == {"pushed_m": 0.055,
                                                       "target_moved_m": 0.055}
    assert evaluate_cli.failure_measures(episodes[:1]) == {}


def test_end_effector_model_trains_and_drives_the_policy(demos, tmp_path):
    overrides = {**TINY_MODEL, "action_space": "ee_delta", "position_aux": True,
                 "position_token": True}
    config = train_cli.TrainConfig(**{**TINY_TRAIN, "steps": 2})
    log = train_cli.train(demos, tmp_path / "ee", overrides, config, progress=False,
                          log=lambda *a: None)
    assert all(np.isfinite(h["loss"]) for h in log["history"])
    model = load_checkpoint(tmp_path / "ee")
    assert len(model.config.state_mean) == 12 and len(model.config.position_mean) == 6
    # The labels are grasp-point offsets: a few cm per 0.1 s step at most, not radians.
    assert np.max(np.abs(np.array(model.config.action_mean)[:, :3])) < 0.5
    chunk = _infer_once(model)
    assert chunk.positions.shape == (16, 9) and np.all(np.isfinite(chunk.positions))
    # IK answers within the Panda's joint range.
    assert np.all(np.abs(chunk.positions[:, :7]) < 3.1)


def test_keypoint_supervision_points_at_the_projected_cube(demos, tmp_path):
    from vla_bringup.policy.vla.config import VLAConfig
    from vla_bringup.sim.world import project_to_image
    loaded = train_cli.load_dataset(demos)
    config = VLAConfig(image_size=64)
    labels = train_cli.keypoint_targets(loaded.positions[:3], 4, config, loaded.info)
    assert labels.shape == (3, 2, 16)
    np.testing.assert_allclose(labels.sum(-1).numpy(), 1.0, rtol=1e-5)
    # The most likely cell holds the target's projection (64 px image, 4 x 4 cells of 16 px).
    u, v = project_to_image(loaded.positions[0, :3], 64, 64)
    assert int(labels[0, 0].argmax()) == int(v // 16) * 4 + int(u // 16)
    overrides = {**TINY_MODEL, "action_space": "ee_delta", "position_aux": True,
                 "position_from": "keypoints"}
    log = train_cli.train(demos, tmp_path / "kp", overrides,
                          train_cli.TrainConfig(**{**TINY_TRAIN, "steps": 2}),
                          progress=False, log=lambda *a: None)
    assert all(h["keypoint"] > 0 and h["loss"] > h["keypoint"] for h in log["history"])


def test_pixel_keypoints_train_and_point_at_the_projected_cube(demos, tmp_path):
    from vla_bringup.policy.vla.config import VLAConfig
    from vla_bringup.sim.world import project_to_image
    loaded = train_cli.load_dataset(demos)
    crop = [0.5, 0.25, 1.0, 1.0]  # rows 32..64, columns 16..64 of the 64 px input
    config = VLAConfig(image_size=64, keypoint_crop=crop)
    points, inside = train_cli.pixel_keypoint_targets(loaded.positions[:3], config, loaded.info)
    assert points.shape == (3, 2, 2) and inside.shape == (3, 2)
    u, v = project_to_image(loaded.positions[0, :3], 64, 64)
    np.testing.assert_allclose(points[0, 0].numpy(), [u - 16, v - 32], atol=1e-4)
    assert bool(inside[0, 0]) == (0 <= u - 16 <= 47 and 0 <= v - 32 <= 31)
    overrides = {**TINY_MODEL, "action_space": "ee_delta", "position_aux": True,
                 "position_token": True, "position_from": "pixels", "keypoint_crop": crop,
                 "keypoint_channels": 8, "start_memory": True}
    log = train_cli.train(demos, tmp_path / "px", overrides,
                          train_cli.TrainConfig(**{**TINY_TRAIN, "steps": 2}),
                          progress=False, log=lambda *a: None)
    assert all(h["keypoint"] > 0 and h["pixel_error"] > 0 for h in log["history"])
    crops = list((demos / "cache").glob("keypoint-crops-*.npy"))
    assert len(crops) == 1 and np.load(crops[0]).shape[1:] == (32, 48, 3)
    model = load_checkpoint(tmp_path / "px")
    assert model.position_pixels is not None and model.config.start_memory
    chunk = _infer_once(model)  # the policy crops the live image itself
    assert chunk.positions.shape == (16, 9) and np.all(np.isfinite(chunk.positions))


def test_executed_chunks_carry_the_next_phase_into_earlier_rows(demos):
    loaded = train_cli.load_dataset(demos)
    labels = train_cli.executed_chunks(loaded, 4)
    assert labels.shape == (len(loaded.states), 4, 9)
    texts = np.asarray(loaded.instructions, dtype=object)
    first_end = int(np.flatnonzero((texts != texts[0]) | (loaded.episode_of != 0))[0]) - 1
    # Row k of frame t is row 0 of frame t + k while the skill lasts ...
    np.testing.assert_array_equal(labels[0, 3], loaded.chunks[3, 0])
    np.testing.assert_array_equal(labels[first_end - 1, 1], loaded.chunks[first_end, 0])
    # ... then the rows planned at the skill's last frame, never the next skill's.
    np.testing.assert_array_equal(labels[first_end - 1, 2], loaded.chunks[first_end, 1])
    np.testing.assert_array_equal(labels[first_end, :3], loaded.chunks[first_end, :3])
    with pytest.raises(ValueError, match="chunk_labels"):
        train_cli.TrainConfig(chunk_labels="future")


def test_held_frames_after_a_skills_done_frame_are_labelled_done(demos):
    loaded = train_cli.load_dataset(demos)
    assert loaded.info["vla_bringup"]["generator_config"]["done_hold_frames"] == 1
    # Episode 0: a pick said done with empty fingers (frame 1), regrasped under the same text and
    # done at frame 4, then held one frame (said not done); then a place done at 7, held (still
    # done). Episode 1: a place with the same text as episode 0's last skill, done at 9 and held.
    texts = ["pick"] * 6 + ["place"] * 2 + ["place"] * 3
    done = np.array([0, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0], dtype=bool)
    progress = np.array([0.1, 1.0, 0.2, 0.5, 1.0, 0.8, 0.3, 1.0, 0.4, 1.0, 0.8])
    synthetic = dataclasses.replace(
        loaded, done=done, progress=progress, instructions=texts,
        episode_of=np.array([0] * 8 + [1] * 3), offsets=np.array([0, 8, 11]))
    labels, progress_labels = train_cli.held_frames_done(synthetic)
    np.testing.assert_array_equal(labels, [0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1])
    np.testing.assert_allclose(progress_labels,
                               [0.1, 1.0, 0.2, 0.5, 1.0, 1.0, 0.3, 1.0, 0.4, 1.0, 1.0])


def test_training_with_held_frames_done_trains_on_the_relabelled_frames(demos, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    # A copy whose first held frame says "not done", as the expert's answer on it often does.
    copy = tmp_path / "demos"
    shutil.copytree(demos, copy, ignore=shutil.ignore_patterns("cache"))
    path = copy / "data" / "chunk-000" / "episode_000000.parquet"
    table = pq.read_table(path)
    done = table.column("skill_done").to_numpy().copy()
    skill = table.column("skill_index").to_numpy()
    held = next(i + 1 for i in range(len(done) - 1) if done[i] and skill[i + 1] == skill[i])
    done[held] = False
    column = table.schema.get_field_index("skill_done")
    pq.write_table(table.set_column(column, table.schema.field(column),
                                    pa.array(done, table.schema.field(column).type)), path)

    loaded = train_cli.load_dataset(copy)
    labels, progress = train_cli.held_frames_done(loaded)
    assert not loaded.done[held] and labels[held] and progress[held] == 1.0
    log = _train(copy, tmp_path / "held", steps=2, held_frames_done=True)
    assert log["dataset"]["held_frames_relabelled_done"] == int(labels.sum() - loaded.done.sum())
    assert log["dataset"]["held_frames_relabelled_done"] >= 1
    assert log["train_config"]["held_frames_done"] is True
    assert np.isfinite(log["final_train_loss"])


def test_skill_start_targets_hold_each_skills_first_position(demos):
    loaded = train_cli.load_dataset(demos)
    starts = train_cli.skill_start_targets(loaded)
    texts = np.asarray(loaded.instructions, dtype=object)
    opens = np.ones(len(texts), dtype=bool)
    opens[1:] = (texts[1:] != texts[:-1]) | (loaded.episode_of[1:] != loaded.episode_of[:-1])
    first = np.flatnonzero(opens)
    assert len(first) >= 2  # two push episodes
    for begin, end in zip(first, list(first[1:]) + [len(texts)]):
        np.testing.assert_array_equal(starts[begin:end], np.repeat(
            loaded.positions[begin:begin + 1, :3], end - begin, axis=0))
    # In a push, the cube moves away from where it started.
    assert np.linalg.norm(loaded.positions[first[1] - 1, :3] - starts[first[1] - 1]) > 0.05
    with_place = train_cli.skill_start_targets(loaded, with_place=True)
    np.testing.assert_array_equal(with_place[:, :3], starts)
    np.testing.assert_array_equal(with_place[first, 3:], loaded.positions[first, 3:6])


def test_export_halves_the_weights_and_keeps_what_evaluate_reads(trained, tmp_path, capsys):
    from safetensors import safe_open

    from vla_bringup.cli import export_checkpoint
    folder = trained[0]
    out = tmp_path / "shipped"
    assert export_checkpoint.main(["--checkpoint", str(folder), "--out", str(out)]) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        dtypes = {weights.get_tensor(k).dtype for k in weights.keys()}
    assert str(dtypes) == "{torch.float16}"
    size = (out / "model.safetensors").stat().st_size
    assert size < (folder / "model.safetensors").stat().st_size
    log = json.loads((out / "train_log.json").read_text())
    assert log["dataset"] == json.loads((folder / "train_log.json").read_text())["dataset"]
    assert all(h["step"] % export_checkpoint.HISTORY_EVERY == 0 for h in log["history"])
    assert evaluate_cli.sim_settings(out)["_source"].endswith("train_log.json")
    original, shipped = _infer_once(load_checkpoint(folder)), _infer_once(load_checkpoint(out))
    np.testing.assert_allclose(shipped.positions, original.positions, atol=2e-2)
    assert export_checkpoint.main(["--checkpoint", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "x")]) == 2
    assert "needs config.json" in capsys.readouterr().err


def test_family_repeat_lists_a_familys_frames_more_often(demos):
    for bad in ({"juggle": 2}, {"push": 0}, {"push": 1.5}, {"push": 11}):
        with pytest.raises(ValueError, match="family_repeat"):
            train_cli.TrainConfig(family_repeat=bad)
    data = train_cli.load_dataset(demos)
    episodes = list(range(len(data.episodes)))
    frames = np.arange(int(data.offsets[-1]))
    lines = []
    tripled = train_cli._repeat_families(frames, data, episodes, {"push": 3}, lines.append)
    assert len(tripled) == 3 * len(frames)
    assert np.array_equal(np.bincount(tripled), np.full(len(frames), 3))
    assert "x 3" in lines[0]
    # The fixture holds push only: repeating another family adds nothing.
    assert np.array_equal(train_cli._repeat_families(frames, data, episodes, {"stack": 2},
                                                     lines.append), frames)
    assert np.array_equal(train_cli._repeat_families(frames, data, episodes, {}, None), frames)


def test_weight_average_saves_the_averaged_weights(demos, tmp_path):
    with pytest.raises(ValueError, match="weight_average"):
        train_cli.TrainConfig(weight_average=1.0)
    plain = _train(demos, tmp_path / "plain", val_every=100)  # saved once, at the last step
    averaged = _train(demos, tmp_path / "averaged", val_every=100, weight_average=0.9)
    assert averaged["train_config"]["weight_average"] == 0.9
    # Same seed, same batches and the same last weights; the averaged checkpoint differs from
    # them (it lags behind), and validation scored what was saved.
    assert [h["loss"] for h in plain["history"]] == [h["loss"] for h in averaged["history"]]
    first = load_checkpoint(tmp_path / "plain").state_dict()
    second = load_checkpoint(tmp_path / "averaged").state_dict()
    moved = [k for k in first if first[k].is_floating_point() and not torch.equal(first[k],
                                                                                   second[k])]
    assert moved, "the averaged checkpoint holds the last weights"
    assert plain["val_history"][-1]["loss"] != averaged["val_history"][-1]["loss"]


def test_evaluate_with_inference_latency_records_it(trained, tmp_path, capsys, monkeypatch):
    folder, _, _ = trained
    released = _record_release_checks(monkeypatch)
    assert evaluate_cli.main(["--checkpoint", str(folder), "--seeds", "1", "--out",
                              str(tmp_path / "bad"), "--sim-config", "[0.25]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err
    out = tmp_path / "late"
    code = evaluate_cli.main(["--checkpoint", str(folder), "--seeds", "1", "--families", "push",
                              "--phrasings", "train", "--out", str(out), "--skill-timeout", "10",
                              "--inference-latency", "0.25", "--inference-period", "0.3",
                              "--validation", "--no-release-check", "--no-progress"])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["release_check"] is False
    assert released == [None, None]  # the expert's and the policy's episode
    assert report["sim_config"]["inference_latency_s"] == 0.25
    assert report["sim_config"]["inference_period_s"] == 0.3
    # The executor's timeouts the episodes ran under: the skill controller's hold included.
    assert report["skill_timing"]["timeout_s"] == 10.0
    assert report["skill_timing"]["policy_timeout_s"] == SkillTiming().policy_timeout_s
    assert report["checkpoint"]["action_lead_s"] == 0.0  # the tiny model declares none
    # --validation: the scenes for choosing settings, apart from the reported evaluation's
    assert report["seeds"]["base"] == VALIDATION_SEED_BASE and report["seeds"]["validation"]
    assert {e["seed"] for e in report["episodes"]} == {VALIDATION_SEED_BASE}
    assert report["results"]["push"]["train"]["expert"]["success_rate"] == 1.0


def test_a_checkpoints_pace_settings_reach_the_policy_and_the_evaluation(trained, tmp_path,
                                                                         capsys):
    from vla_bringup.cli import export_checkpoint
    from vla_bringup.policy.vla.config import VLAConfig
    folder, _, _ = trained
    assert evaluate_cli.sim_settings(folder)["inference_period_s"] == 0.0  # none asked for
    paced = tmp_path / "paced"
    assert export_checkpoint.main(["--checkpoint", str(folder), "--out", str(paced),
                                   "--set", "inference_period_s=0.3",
                                   "--set", "action_lead_s=0.25"]) == 0
    stored = json.loads((paced / "config.json").read_text())
    assert (stored["inference_period_s"], stored["action_lead_s"]) == (0.3, 0.25)
    # The policy node and run_episode read both from the backend; evaluate reads the period
    # from the checkpoint, and an explicit setting still wins.
    policy = VLAPolicy(model=load_checkpoint(paced), device="cpu")
    assert (policy.min_inference_period_s, policy.min_action_lead_s) == (0.3, 0.25)
    assert evaluate_cli.sim_settings(paced)["inference_period_s"] == 0.3
    assert evaluate_cli.sim_settings(paced, {"inference_period_s": 0.0})[
        "inference_period_s"] == 0.0
    for bad in (-0.1, 2.5, float("nan")):
        with pytest.raises(ValueError, match="inference_period_s"):
            VLAConfig(inference_period_s=bad)
        with pytest.raises(ValueError, match="action_lead_s"):
            VLAConfig(action_lead_s=bad)
    assert export_checkpoint.main(["--checkpoint", str(folder), "--out", str(tmp_path / "x"),
                                   "--set", "inference_period_s=3"]) == 2
    assert "inference_period_s" in capsys.readouterr().err
