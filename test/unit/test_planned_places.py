"""Places taken from the plan. `push_place: planned`: a push's latched place is the latched
target start plus the training data's offset for the direction the plan gives the skill.
`cube_place: target_detector`: a place onto a cube latches where the target detector finds that
cube when asked with the planner's pick text, and `cube_place_extra_ratio` moves that place
beyond the cube, away from the held one. `cube_place_view: pick_start` asks on the first frames
of the pick before the place instead of the place's own.

What must hold: the backend replaces only a push's place, by the offset (plus `push_extra_m`
along it) from the target it latched; other skills and `push_place: model` keep the network's
place; a direction without an offset is a clear error from `infer`, not a silent motion; the
trainer measures the offsets on its training pushes, and the exporter can switch an older
checkpoint over from a dataset.
"""
import json

import numpy as np
import pytest
import torch

from vla_bringup.cli import export_checkpoint
from vla_bringup.cli import train as train_cli
from vla_bringup.cli.train_data import load_datasets, push_offsets
from vla_bringup.core.robot import PANDA_JOINT_NAMES
from vla_bringup.core.skill_executor import REGRASP_MARK
from vla_bringup.policy.base import Observation, SkillSpec
from vla_bringup.policy.vla.backend import START_FRAMES, VLAPolicy
from vla_bringup.policy.vla.config import VLAConfig
from vla_bringup.policy.vla.encoders import TextEncoder
from vla_bringup.policy.vla.model import VLAModel, load_checkpoint
from vla_bringup.sim.demonstrations import GeneratorConfig, generate
from vla_bringup.sim.kinematics import FINGER_OPEN, HOME_ARM

pytestmark = pytest.mark.usefixtures("torch_one_thread")

JOINTS = list(PANDA_JOINT_NAMES)
HOME = np.concatenate([HOME_ARM, [FINGER_OPEN, FINGER_OPEN]])
SMALL = dict(image_size=64, d_model=32, n_heads=2, fusion_layers=1, head_layers=1, keypoints=4,
             action_horizon=4, language_tokens=2, dropout=0.0, action_space="ee_delta",
             position_aux=True, position_token=True, start_memory=True, place_memory=True)
OFFSETS = {"left": [0.0, 0.12, 0.0], "right": [0.0, -0.12, 0.0]}
TINY_TRAIN = {"steps": 2, "batch": 8, "val_every": 2, "warmup_steps": 1}


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder()


@pytest.fixture(scope="module")
def push_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pushes") / "data"
    config = GeneratorConfig(image_size=64, families=("push",), done_hold_frames=1)
    assert generate(root, 2, config, progress=False)["episodes"] == 2
    return root


def _latched(model, text_encoder, skill):
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")
    policy.reset(skill)
    rng = np.random.default_rng(0)
    for index in range(START_FRAMES):
        frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        policy.infer(Observation(1.0 + 0.1 * index, JOINTS, HOME, skill, image=frame))
    return policy.latched_start()[0]


def test_config_checks_the_push_place_settings():
    with pytest.raises(ValueError, match="push_place"):
        VLAConfig(**SMALL, push_place="somewhere")
    without_memory = {**SMALL, "place_memory": False}
    with pytest.raises(ValueError, match="needs place_memory"):
        VLAConfig(**without_memory, push_place="planned", push_offsets=OFFSETS)
    with pytest.raises(ValueError, match="push_extra_m"):
        VLAConfig(**SMALL, push_extra_m=-0.01)
    with pytest.raises(ValueError, match="point somewhere"):
        VLAConfig(**SMALL, push_offsets={"left": [0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="NaN"):
        VLAConfig(**SMALL, push_offsets={"left": [0.0, float("nan"), 0.0]})
    with pytest.raises(ValueError, match="never gives"):
        VLAConfig(**SMALL, push_offsets={"up": [0.0, 0.0, 0.1]})
    config = VLAConfig(**SMALL, push_place="planned", push_offsets={"left": (0, 0.12, 0)})
    assert VLAConfig.from_dict(json.loads(config.to_json())).push_offsets == {
        "left": [0.0, 0.12, 0.0]}


def test_a_push_latches_its_place_from_the_plan_and_other_skills_do_not(text_encoder):
    torch.manual_seed(0)
    model = VLAModel(VLAConfig(**SMALL, push_place="planned", push_offsets=OFFSETS,
                               push_extra_m=0.02)).eval()
    push = SkillSpec("s1", "push", "push the red cube to the right", "red_cube", "right")
    latched = _latched(model, text_encoder, push)
    torch.testing.assert_close(latched[3:6], latched[:3] + torch.tensor([0.0, -0.14, 0.0]))
    # The same network with its own place: the target is the same, the place is the network's.
    model.config = VLAConfig(**SMALL, push_offsets=OFFSETS)
    own = _latched(model, text_encoder, push)
    torch.testing.assert_close(own[:3], latched[:3])
    assert torch.linalg.norm(own[3:6] - latched[3:6]) > 0.01
    # A pick keeps the network's place even with push_place planned.
    model.config = VLAConfig(**SMALL, push_place="planned", push_offsets=OFFSETS)
    pick = SkillSpec("s2", "pick", "pick up the red cube", "red_cube", "")
    picked = _latched(model, text_encoder, pick)
    model.config = VLAConfig(**SMALL)
    torch.testing.assert_close(picked, _latched(model, text_encoder, pick))


def test_a_push_without_an_offset_for_its_direction_is_refused_by_infer(text_encoder):
    model = VLAModel(VLAConfig(**SMALL, push_place="planned", push_offsets=OFFSETS)).eval()
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")
    skill = SkillSpec("s1", "push", "push the red cube forward", "red_cube", "forward")
    policy.reset(skill)  # the node resets outside its error handling: this must not raise
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="'forward' has no planned offset.*'left', 'right'"):
        policy.infer(Observation(1.0, JOINTS, HOME, skill, image=frame))
    pick = SkillSpec("s2", "pick", "pick up the red cube", "red_cube", "")
    policy.reset(pick)  # the next skill starts clean
    policy.infer(Observation(2.0, JOINTS, HOME, pick, image=frame))
    model.config = VLAConfig(**SMALL, push_place="planned")
    with pytest.raises(ValueError, match="no push_offsets"):
        VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")


def test_trainer_measures_the_offsets_and_the_exporter_switches_a_checkpoint(push_dataset,
                                                                               tmp_path):
    demos = load_datasets([push_dataset])
    measured = push_offsets(demos, range(len(demos.episodes)))
    directions = {e["destination"] for e in demos.episodes}
    assert set(measured) == directions
    for name, offset in measured.items():  # the expert pushes 12 cm along +-y
        np.testing.assert_allclose(offset, [0.0, 0.12 if name == "left" else -0.12, 0.0],
                                   atol=1e-4)
    model = {**SMALL, "position_from": "pixels", "keypoint_crop": [0.5, 0.25, 1.0, 1.0],
             "keypoint_channels": 8, "push_place": "planned", "push_extra_m": 0.02}
    model.pop("action_horizon")
    run = tmp_path / "run"
    train_cli.train([push_dataset], run, model, train_cli.TrainConfig(**TINY_TRAIN), None,
                    progress=False, log=lambda *a: None)
    trained = load_checkpoint(run).config
    assert trained.push_place == "planned" and trained.push_extra_m == 0.02
    assert set(trained.push_offsets) <= directions and trained.push_offsets
    # An older checkpoint: no offsets, its own place. Switching needs a dataset to measure on.
    old = tmp_path / "old"
    VLAModel(VLAConfig(**SMALL)).save_checkpoint(old)
    args = ["--checkpoint", str(old), "--out", str(tmp_path / "new"),
            "--set", "push_place=planned"]
    assert export_checkpoint.main(args) == 2
    stacks = tmp_path / "stacks"  # --data without pushes is refused, not taken as "none"
    generate(stacks, 1, GeneratorConfig(image_size=64, families=("stack",), done_hold_frames=1),
             progress=False)
    assert export_checkpoint.main(args + ["--data", str(stacks)]) == 2
    assert export_checkpoint.main(args + ["--data", str(push_dataset),
                                          "--set", "push_extra_m=0.02"]) == 0
    switched = load_checkpoint(tmp_path / "new").config
    assert (switched.push_place, switched.push_offsets, switched.push_extra_m) == (
        "planned", measured, 0.02)
    # What was changed at export is kept with the training log.
    assert export_checkpoint.main(["--checkpoint", str(run), "--out", str(tmp_path / "tuned"),
                                   "--set", "push_extra_m=0.03"]) == 0
    log = json.loads((tmp_path / "tuned" / "train_log.json").read_text())
    assert log["exported_from"]["settings"] == {"push_extra_m": 0.03}
    assert load_checkpoint(tmp_path / "tuned").config.push_offsets == trained.push_offsets
    assert export_checkpoint.main(["--checkpoint", str(tmp_path / "tuned"), "--out",
                                   str(tmp_path / "again"), "--set", "done_threshold=0.6"]) == 0
    again = json.loads((tmp_path / "again" / "train_log.json").read_text())["exported_from"]
    assert again["settings"] == {"done_threshold": 0.6}
    assert again["previous"]["settings"] == {"push_extra_m": 0.03}
    # Only inference settings, and each checked by the config.
    for bad in ("action_space=joint_delta", "push_extra_m=0.5", "push_extra_m=far",
                "cube_place=elsewhere", "cube_place_extra_ratio=0.2"):
        assert export_checkpoint.main(args[:4] + ["--set", bad]) == 2
    with pytest.raises(SystemExit):
        export_checkpoint.main(args[:4] + ["--set", "push_place"])


PIXELS = dict(position_from="pixels", keypoint_crop=[0.5, 0.25, 1.0, 1.0], keypoint_channels=8)


def test_a_place_onto_a_cube_latches_where_the_target_detector_finds_that_cube(text_encoder):
    with pytest.raises(ValueError, match="cube_place"):
        VLAConfig(**SMALL, **PIXELS, cube_place="elsewhere")
    with pytest.raises(ValueError, match="position_from 'pixels'"):
        VLAConfig(**SMALL, cube_place="target_detector")
    torch.manual_seed(0)
    model = VLAModel(VLAConfig(**SMALL, **PIXELS, cube_place="target_detector")).eval()
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")
    place = SkillSpec("s1", "place", "place the red cube on the blue cube", "red_cube",
                      "blue_cube")
    policy.reset(place)
    rng = np.random.default_rng(0)
    holding = HOME.copy()
    holding[7:] = 0.025  # a cube in the hand
    found = []
    for index in range(START_FRAMES):
        frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        policy.infer(Observation(1.0 + 0.1 * index, JOINTS, holding, place, image=frame))
        with torch.no_grad():  # what the detector says, asked as a pick with the hand open
            found.append(model.find_target(
                model.preprocess(torch.from_numpy(frame).unsqueeze(0)),
                text_encoder("pick up the blue cube").unsqueeze(0),
                torch.as_tensor(policy._state(HOME), dtype=torch.float32).unsqueeze(0)))
    torch.testing.assert_close(policy.latched_start()[:, 3:6],
                               torch.stack(found).median(0).values)
    # The target stays the network's own; a place into the tray keeps the network's place.
    tray = SkillSpec("s2", "place", "place the red cube in the tray", "red_cube", "tray")
    latched = _latched(model, text_encoder, tray)
    model.config = VLAConfig(**SMALL, **PIXELS)
    torch.testing.assert_close(latched, _latched(model, text_encoder, tray))
    cube_own = _latched(model, text_encoder, place)
    model.config = VLAConfig(**SMALL, **PIXELS, cube_place="target_detector")
    cube_asked = _latched(model, text_encoder, place)
    torch.testing.assert_close(cube_asked[:3], cube_own[:3])
    assert torch.linalg.norm(cube_asked[3:6] - cube_own[3:6]) > 1e-3


def test_the_cube_place_can_lie_beyond_the_lower_cube_along_the_approach(text_encoder):
    with pytest.raises(ValueError, match="cube_place_extra_ratio"):
        VLAConfig(**SMALL, **PIXELS, cube_place="target_detector", cube_place_extra_ratio=0.8)
    with pytest.raises(ValueError, match="cube_place_extra_ratio"):
        VLAConfig(**SMALL, **PIXELS, cube_place="target_detector", cube_place_extra_ratio=-0.1)
    with pytest.raises(ValueError, match="set that too"):
        VLAConfig(**SMALL, **PIXELS, cube_place_extra_ratio=0.2)
    torch.manual_seed(0)
    ratio = 0.2
    model = VLAModel(VLAConfig(**SMALL, **PIXELS, cube_place="target_detector",
                               cube_place_extra_ratio=ratio)).eval()
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")
    place = SkillSpec("s1", "place", "place the red cube on the blue cube", "red_cube",
                      "blue_cube")
    policy.reset(place)
    rng = np.random.default_rng(1)
    for index in range(START_FRAMES):
        frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        policy.infer(Observation(1.0 + 0.1 * index, JOINTS, HOME, place, image=frame))
        with torch.no_grad():
            lower_cube = policy._find_cube(model.preprocess(torch.from_numpy(frame)[None]),
                                           policy._state(HOME))[0]
        frame_latch = policy._starts[-1][0]  # this frame's latch, before the median
        held_cube = frame_latch[:3]
        expected_xy = lower_cube[:2] + ratio * (lower_cube[:2] - held_cube[:2])
        torch.testing.assert_close(frame_latch[3:5], expected_xy)
        torch.testing.assert_close(frame_latch[5], lower_cube[2])  # the height is the cube's
        assert torch.linalg.norm(lower_cube[:2] - held_cube[:2]) > 1e-4  # a real shift


def _frames(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


def _found(model, text_encoder, policy, frames) -> torch.Tensor:
    """(3,) m: the median of where the detector finds the blue cube in `frames`, asked as the
    backend asks it (the planner's pick text, the fingers open)."""
    with torch.no_grad():
        found = [model.find_target(model.preprocess(torch.from_numpy(frame).unsqueeze(0)),
                                   text_encoder("pick up the blue cube").unsqueeze(0),
                                   torch.as_tensor(policy._state(HOME), dtype=torch.float32
                                                   ).unsqueeze(0)) for frame in frames]
    return torch.cat(found).median(0).values


def test_a_cube_place_can_find_the_lower_cube_in_the_first_frames_of_its_pick(text_encoder):
    with pytest.raises(ValueError, match="cube_place_view"):
        VLAConfig(**SMALL, **PIXELS, cube_place="target_detector", cube_place_view="above")
    with pytest.raises(ValueError, match="set that too"):
        VLAConfig(**SMALL, **PIXELS, cube_place_view="pick_start")
    torch.manual_seed(0)
    model = VLAModel(VLAConfig(**SMALL, **PIXELS, cube_place="target_detector",
                               cube_place_view="pick_start")).eval()
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")
    pick = SkillSpec("s1", "pick", "pick up the red cube", "red_cube")
    regrasp = SkillSpec(f"s1{REGRASP_MARK}1", "pick", "pick up the red cube", "red_cube")
    place = SkillSpec("s2", "place", "place the red cube on the blue cube", "red_cube",
                      "blue_cube")
    holding = HOME.copy()
    holding[7:] = 0.025  # a cube in the hand
    place_frames = _frames(9, START_FRAMES)

    def run(skill, frames, joints=HOME):
        policy.reset(skill)
        for index, frame in enumerate(frames):
            hand = joints[index] if isinstance(joints, list) else joints
            policy.infer(Observation(1.0 + 0.1 * index, JOINTS, hand, skill, image=frame))

    def place_latch(skill=place) -> torch.Tensor:
        run(skill, place_frames, holding)
        return policy.latched_start()[0, 3:6]

    def found(frames) -> torch.Tensor:
        return _found(model, text_encoder, policy, frames)

    pick_frames = _frames(2, START_FRAMES + 2)  # only the first START_FRAMES are kept
    run(pick, pick_frames)
    torch.testing.assert_close(place_latch(), found(pick_frames[:START_FRAMES]))
    assert torch.linalg.norm(found(pick_frames[:START_FRAMES]) - found(place_frames)) > 1e-4
    # A regrasp keeps its pick's views and adds none of its own, though there is room.
    run(pick, pick_frames[:2])
    run(regrasp, _frames(3, 3))
    torch.testing.assert_close(place_latch(), found(pick_frames[:2]))
    # Only the pick's first frames count, and of those only the ones with the fingers open.
    run(pick, pick_frames, [holding, holding] + [HOME] * START_FRAMES)
    torch.testing.assert_close(place_latch(), found(pick_frames[2:START_FRAMES]))
    # A new pick starts afresh, even under an id seen before, and keeps nothing with the
    # fingers closed: the place finds the cube in its own frames.
    run(pick, _frames(7, 3), holding)
    torch.testing.assert_close(place_latch(), found(place_frames))
    # So does a place of another cube than the one picked, a place after a regrasp of a pick
    # never seen, and one after reset(None).
    run(pick, pick_frames)
    other = SkillSpec("s3", "place", "place the green cube on the blue cube", "green_cube",
                      "blue_cube")
    torch.testing.assert_close(place_latch(other), found(place_frames))
    for unseen in (SkillSpec(f"s0{REGRASP_MARK}1", "pick", "pick up the red cube", "red_cube"),
                   None):
        run(pick, pick_frames)
        if unseen is None:
            policy.reset(None)
        else:
            run(unseen, _frames(3, 3))
        torch.testing.assert_close(place_latch(), found(place_frames))


def test_a_place_can_take_its_held_target_from_the_grasp_point(text_encoder):
    """place_target "grasp": during a place the target is the object in the hand, so its
    position is the grasp point (forward kinematics), not the detector's reading of the words."""
    with pytest.raises(ValueError, match="place_target"):
        VLAConfig(**SMALL, place_target="hand")
    with pytest.raises(ValueError, match="needs position_token"):
        VLAConfig(**{**SMALL, "position_token": False, "start_memory": False,
                     "place_memory": False}, place_target="grasp")
    with pytest.raises(ValueError, match="action_space ee_delta"):  # no grasp point in the state
        VLAConfig(**{**SMALL, "action_space": "joint_delta", "start_memory": False,
                     "place_memory": False}, place_target="grasp")
    torch.manual_seed(0)
    model = VLAModel(VLAConfig(**SMALL, place_target="grasp")).eval()
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")
    grasp = torch.as_tensor(policy._state(HOME)[8:11], dtype=torch.float32)
    place = SkillSpec("s1", "place", "rest the red brick atop the blue brick", "red_cube",
                      "blue_cube")
    # The model: the held target replaces the detector's, and the head reads it.
    images = torch.rand(1, 3, 64, 64)
    language = text_encoder(place.instruction).unsqueeze(0)
    state = torch.as_tensor(policy._state(HOME), dtype=torch.float32).unsqueeze(0)
    with torch.no_grad():
        own = model(images, language, state)
        held = model(images, language, state, held_target=grasp.unsqueeze(0))
        expected = torch.cat([(grasp - model.position_mean[:3]) / model.position_std[:3],
                              own["positions"][0, 3:]]).unsqueeze(0)
        given = model(images, language, state, given_positions=expected)
    torch.testing.assert_close(held["positions"], expected)
    torch.testing.assert_close(held["actions"], given["actions"])
    assert not torch.allclose(held["actions"], own["actions"])
    # The backend: a place latches the grasp point as its target's start.
    latched = _latched(model, text_encoder, place)
    torch.testing.assert_close(latched[:3], grasp)  # the start is where the hand was
    # Without the option the start is the detector's reading, elsewhere.
    pick = SkillSpec("s0", "pick", "pick up the red cube", "red_cube", "")
    model.config = VLAConfig(**SMALL)
    own = _latched(model, text_encoder, place)
    assert torch.linalg.norm(own[:3] - grasp) > 1e-3
    torch.testing.assert_close(own[3:], latched[3:])  # the place is left alone
    # Other skills keep the detector's target.
    model.config = VLAConfig(**SMALL, place_target="grasp")
    with_option = _latched(model, text_encoder, pick)
    model.config = VLAConfig(**SMALL)
    torch.testing.assert_close(with_option, _latched(model, text_encoder, pick))


def test_grasp_onto_cubes_takes_the_grasp_point_only_for_places_onto_a_cube(text_encoder):
    """place_target "grasp_onto_cubes": a stack's held cube is the grasp point; a tray place
    keeps the detector's reading (its target need not be known to a few centimetres)."""
    torch.manual_seed(0)
    model = VLAModel(VLAConfig(**SMALL)).eval()
    onto_cube = SkillSpec("s1", "place", "rest the red brick atop the blue brick", "red_cube",
                          "blue_cube")
    into_tray = SkillSpec("s1", "place", "place the red cube in the tray", "red_cube", "tray")
    grasp = torch.as_tensor(VLAPolicy(model=model, text_encoder=text_encoder,
                                      device="cpu")._state(HOME)[8:11], dtype=torch.float32)
    latched = {}
    for setting in ("model", "grasp", "grasp_onto_cubes"):
        model.config = VLAConfig(**SMALL, place_target=setting)
        latched[setting] = {skill.destination: _latched(model, text_encoder, skill)
                            for skill in (onto_cube, into_tray)}
    torch.testing.assert_close(latched["grasp_onto_cubes"]["blue_cube"][:3], grasp)
    torch.testing.assert_close(latched["grasp_onto_cubes"]["blue_cube"],
                               latched["grasp"]["blue_cube"])
    torch.testing.assert_close(latched["grasp_onto_cubes"]["tray"], latched["model"]["tray"])
    torch.testing.assert_close(latched["grasp"]["tray"][:3], grasp)  # "grasp": every place
    assert torch.linalg.norm(latched["model"]["tray"][:3] - grasp) > 1e-3
