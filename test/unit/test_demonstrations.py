"""Demonstration generator: phrasings, the LeRobot layout, counts, crash leftovers and resume."""
import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vla_bringup.core.chunk_schedule import advance_rows
from vla_bringup.core.instruction import plan
from vla_bringup.policy.base import ActionChunk, PolicyBackend
from vla_bringup.policy.scripted_expert import ScriptedExpert
from vla_bringup.sim import demonstrations
from vla_bringup.sim.demonstrations import (
    COLORS, SKILL_TEMPLATES, TASK_TEMPLATES, GeneratorConfig, generate, run_episode,
    sample_episode)


def test_every_task_template_plans_into_its_family():
    for phrasing, families in TASK_TEMPLATES.items():
        for family, templates in families.items():
            for template in templates:
                for color in COLORS:
                    other = next(c for c in COLORS if c != color)
                    for side in ("left", "right"):
                        text = template.format(c=color, d=other, dir=side)
                        result = plan(text)
                        destination = {"pick_place": "tray", "push": side,
                                       "stack": f"{other}_cube"}[family]
                        assert (result.family, result.target, result.destination) == (
                            family, f"{color}_cube", destination), text


def test_held_out_phrasings_are_never_used_for_training():
    for table in (TASK_TEMPLATES, SKILL_TEMPLATES):
        for key in table["train"]:
            assert not set(table["train"][key]) & set(table["held_out"][key]), key
    seen = set()
    for attempt in range(60):
        spec = sample_episode(attempt, phrasing="held_out")
        seen.update(s.instruction for s in spec.skills)
        assert spec.seed == attempt
    train = {sample_episode(a).skills[0].instruction for a in range(60)}
    assert not seen & train


def test_episodes_are_deterministic_and_varied():
    a, b = sample_episode(5), sample_episode(5)
    assert a == b
    specs = [sample_episode(i) for i in range(30)]
    assert {s.family for s in specs} == {"pick_place", "push", "stack"}
    assert {s.target for s in specs} == {f"{c}_cube" for c in COLORS}
    assert {len(s.colors) for s in specs} == {3, 4}
    for spec in specs:
        assert spec.target.split("_")[0] in spec.colors
        assert len(spec.skills) == (1 if spec.family == "push" else 2)
        if spec.family == "stack":
            assert spec.destination.split("_")[0] in spec.colors


def _read(root):
    info = json.loads((root / "meta" / "info.json").read_text())
    episodes = [json.loads(line) for line in (root / "meta" / "episodes.jsonl").open()]
    tasks = [json.loads(line) for line in (root / "meta" / "tasks.jsonl").open()]
    return info, episodes, tasks


def test_generate_writes_the_layout_and_resumes_without_duplicates(tmp_path):
    root = tmp_path / "demos"
    config = GeneratorConfig(image_size=64, families=("push",), done_hold_frames=1)
    summary = generate(root, 2, config, progress=False)
    assert summary["episodes"] == 2 and summary["new_episodes"] == 2
    info, episodes, tasks = _read(root)
    assert info["total_episodes"] == 2 and info["fps"] == 10.0
    assert info["codebase_version"] == "v2.1" and info["splits"] == {"train": "0:2"}
    frames = 0
    for index, episode in enumerate(episodes):
        assert episode["episode_index"] == index and episode["success"]
        path = root / info["data_path"].format(episode_chunk=0, episode_index=index)
        table = pq.read_table(path)
        assert table.num_rows == episode["length"]
        frames += table.num_rows
        assert table.column("episode_index").to_pylist() == [index] * table.num_rows
        assert table.column("frame_index").to_pylist() == list(range(table.num_rows))
        chunk = table.column("action.chunk").combine_chunks().flatten().flatten()
        assert chunk.to_numpy().reshape(-1, 16, 9).shape[0] == table.num_rows
        assert any(table.column("skill_done").to_pylist())
        names = {t["task_index"]: t["task"] for t in tasks}
        assert [names[i] for i in table.column("task_index").to_pylist()] == \
            table.column("instruction").to_pylist()
        for frame in (0, table.num_rows - 1):
            image = root / info["image_path"].format(episode_index=index, frame_index=frame)
            assert np.asarray(Image.open(image)).shape == (64, 64, 3)
        folder = (root / info["image_path"].format(episode_index=index, frame_index=0)).parent
        assert len(list(folder.iterdir())) == table.num_rows
    assert info["total_frames"] == frames == summary["total_frames"]
    assert info["total_tasks"] == len(tasks)
    indices = np.concatenate([pq.read_table(p).column("index").to_numpy()
                              for p in sorted(root.glob("data/chunk-000/*.parquet"))])
    assert list(indices) == list(range(frames))

    # Re-running with the same target adds nothing.
    assert generate(root, 2, config, progress=False)["new_episodes"] == 0
    # Leftovers of a crash mid-episode are dropped, then the next attempt is done once.
    (root / "data" / "chunk-000" / ".episode_000002.parquet.tmp").write_bytes(b"partial")
    (root / "images" / "observation.image" / ".episode_000002.tmp").mkdir()
    (root / "images" / "observation.image" / "episode_000002").mkdir()
    summary = generate(root, 3, config, progress=False)
    assert summary["new_episodes"] == 1
    info, episodes, _ = _read(root)
    assert [e["episode_index"] for e in episodes] == [0, 1, 2]
    assert len({e["attempt"] for e in episodes}) == 3
    assert info["total_episodes"] == 3
    assert not list(root.rglob(".*.tmp"))
    with pytest.raises(ValueError, match="same settings"):
        generate(root, 3, GeneratorConfig(image_size=96, families=("push",)), progress=False)
    # The other settings too: info.json keeps one set for all episodes.
    other = dataclasses.replace(config, camera_jitter_m=0.05)
    with pytest.raises(ValueError, match=r"other settings.*'camera_jitter_m': \(0.01, 0.05\)"):
        generate(root, 4, other, progress=False)
    # An info.json from before a setting existed resumes with that setting at its default.
    path = root / "meta" / "info.json"
    written = json.loads(path.read_text())
    del written["vla_bringup"]["generator_config"]["inference_latency_s"]
    path.write_text(json.dumps(written))
    assert generate(root, 4, config, progress=False)["new_episodes"] == 1
    assert _read(root)[0]["vla_bringup"]["generator_config"]["inference_latency_s"] == 0.0


class _HoldStill(PolicyBackend):
    """A non-privileged backend: checks what it is given, asks the arm to stay put."""
    name = "hold"
    seen = 0

    def reset(self, skill):
        pass

    def infer(self, observation):
        assert observation.scene is None and observation.image.shape == (64, 64, 3)
        self.seen += 1
        rows = np.tile(observation.joint_positions, (4, 1))
        return ActionChunk(observation.joint_names, rows, 0.1)


def test_run_episode_evaluates_any_backend_without_ground_truth():
    config = GeneratorConfig(image_size=64, skill_timeout_s=1.0)
    policy = _HoldStill()
    data = run_episode(sample_episode(1, phrasing="held_out"), config, policy, record=False)
    assert not data.success and "timed out" in data.error
    assert policy.seen == data.length >= 10
    assert data.task_met_at_failure is False  # the arm held still: nothing was done
    assert data.measures["target_moved_m"] < 0.005  # and the measures say so


class _NeverDone(ScriptedExpert):
    """The scripted expert, which never says its skill is done."""

    def infer(self, observation):
        chunk = super().infer(observation)
        return ActionChunk(chunk.joint_names, chunk.positions, chunk.dt, False, chunk.progress)


def test_a_skill_that_times_out_with_its_task_done_is_told_apart():
    config = GeneratorConfig(image_size=64, skill_timeout_s=12.0)
    spec = sample_episode(0, families=("push",))
    data = run_episode(spec, config, _NeverDone(), record=False)
    assert not data.success and "timed out" in data.error
    assert data.task_met_at_failure is True  # the cube went far enough; "done" never came
    assert data.measures["pushed_m"] >= 0.08
    finished = run_episode(spec, config, ScriptedExpert(), record=False)
    assert finished.success and finished.task_met_at_failure is None
    assert finished.measures["pushed_m"] >= 0.08 > abs(finished.measures["height_error_m"])


class _CountingExpert(ScriptedExpert):
    """The scripted expert, keeping the stamps of the frames it is asked about, per skill."""

    def __init__(self) -> None:
        self.stamps: list[list[float]] = []  # before the base class, which resets
        super().__init__()

    @property
    def frames(self) -> int:
        return sum(len(stamps) for stamps in self.stamps)

    def reset(self, skill):
        self.stamps.append([])
        super().reset(skill)

    def infer(self, observation):
        self.stamps[-1].append(observation.stamp)
        return super().infer(observation)


def test_inference_latency_delays_chunks_and_skips_frames_while_busy():
    with pytest.raises(ValueError, match="inference_latency_s"):
        GeneratorConfig(inference_latency_s=-0.1)
    spec = sample_episode(0)
    runs = {}
    for latency in (0.0, 0.25):
        expert = _CountingExpert()
        config = GeneratorConfig(image_size=64, inference_latency_s=latency)
        data = run_episode(spec, config, expert, record=False)
        runs[latency] = (data, expert.frames)
    (fast, fast_frames), (slow, slow_frames) = runs[0.0], runs[0.25]
    # The expert copes with a quarter second of delay; while a chunk is in flight (0.25 s: the
    # next two frames), the policy reads no frame, so it sees about a third as many.
    assert fast.success and slow.success, (fast.error, slow.error)
    assert fast_frames == fast.length
    assert slow_frames == slow.length < 0.5 * fast_frames


class _LeadingExpert(_CountingExpert):
    """The scripted expert declaring an action lead, keeping the chunk it gave for each stamp."""

    def __init__(self, lead_s: float) -> None:
        self.min_action_lead_s = lead_s
        self.given: dict[float, np.ndarray] = {}
        super().__init__()

    def infer(self, observation):
        chunk = super().infer(observation)
        self.given[observation.stamp] = chunk.positions.copy()
        return chunk


@pytest.mark.parametrize("lead, latency, shift", [(0.25, 0.0, 0.25), (0.25, 0.25, 0.0),
                                                  (0.4, 0.25, 0.15)])
def test_an_action_lead_runs_chunks_from_that_moment_less_the_latency(monkeypatch, lead,
                                                                      latency, shift):
    executed = []
    original = demonstrations.SkillExecutor.on_chunk

    def recording(self, chunk, now, *args, **kwargs):
        executed.append(chunk)
        return original(self, chunk, now, *args, **kwargs)
    monkeypatch.setattr(demonstrations.SkillExecutor, "on_chunk", recording)
    expert = _LeadingExpert(lead)
    run_episode(sample_episode(0), GeneratorConfig(image_size=64, inference_latency_s=latency),
                expert, record=False)
    assert len(executed) > 10
    for chunk in executed:  # stamped with the frame's time, rows advanced by what latency lacks
        given = expert.given[chunk.start_time]
        np.testing.assert_allclose(chunk.positions, advance_rows(given, chunk.dt, shift),
                                   atol=1e-12)
    if shift:
        assert not np.allclose(executed[5].positions, expert.given[executed[5].start_time])


def test_inference_period_reads_a_frame_every_period_and_applies_chunks_at_once():
    with pytest.raises(ValueError, match="inference_period_s"):
        GeneratorConfig(inference_period_s=3.0)
    spec = sample_episode(0)
    expert = _CountingExpert()
    data = run_episode(spec, GeneratorConfig(image_size=64, inference_period_s=0.3), expert,
                       record=False)
    assert data.success, data.error
    skills = [stamps for stamps in expert.stamps if stamps]
    assert len(skills) == len(spec.skills)
    hold = GeneratorConfig().done_hold_frames
    for stamps in skills:
        gaps = np.diff(stamps)
        # every third 10 Hz frame, never sooner (no chunk is in flight: latency is 0), until the
        # skill has ended; the frames held after it come at the camera's 10 Hz (with no latency
        # the success is seen on a frame read, so the first of those gaps is 0.1 s too)
        np.testing.assert_allclose(gaps[:-hold], 0.3, atol=1e-6)
        np.testing.assert_allclose(gaps[-hold:], 0.1, atol=1e-6)
