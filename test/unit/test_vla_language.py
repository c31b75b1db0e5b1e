"""Token-level language input (`language_input="tokens"`): MiniLM token states, attention pools.

Why it exists: in the pooled sentence embedding "to the left" and "to the right" are nearly the
same vector, and a trained policy pushed the wrong way. These tests check the plumbing with the
real MiniLM: the encoder's token states and padding, the pool's masking, that the direction word
reaches the pixel detector, checkpoints, the backend and the trainer's cache.
"""
import numpy as np
import pytest
import torch

from vla_bringup.policy.base import Observation, SkillSpec
from vla_bringup.policy.vla.config import VLAConfig
from vla_bringup.policy.vla.encoders import TextEncoder
from vla_bringup.policy.vla.fusion import AttentionPool
from vla_bringup.policy.vla.model import VLAModel, load_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")

JOINTS = ["panda_joint1", "panda_joint2", "panda_joint3", "panda_joint4", "panda_joint5",
          "panda_joint6", "panda_joint7", "panda_finger_joint1", "panda_finger_joint2"]
HOME = np.array([0.0, -0.4, 0.0, -2.4, 0.0, 2.0, np.pi / 4, 0.04, 0.04])
LEFT, RIGHT = "push the red cube to the left", "push the red cube to the right"


def tokens_config(**overrides) -> VLAConfig:
    base = dict(image_size=64, d_model=32, n_heads=2, fusion_layers=1, head_layers=1,
                keypoints=4, action_horizon=4, language_tokens=2, dropout=0.0,
                language_input="tokens", language_max_tokens=12)
    return VLAConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder()


def test_token_states_are_padded_with_zero_rows_and_cached_apart(text_encoder):
    sentence = text_encoder(LEFT)
    states = text_encoder(LEFT, 12)
    assert sentence.shape == (384,) and states.shape == (12, 384)
    length = len(text_encoder.tokenizer(LEFT)["input_ids"])  # [CLS] ... [SEP]
    assert length < 11
    torch.testing.assert_close(states[0], sentence)  # the sentence row, then the tokens
    assert bool((states[1:1 + length].abs().amax(-1) > 0).all())
    assert bool((states[1 + length:] == 0).all())
    assert torch.equal(text_encoder(LEFT), sentence)  # the sentence cache is untouched
    # Longer texts are cut at the limit, not refused.
    long = " ".join(["push the red cube to the left"] * 5)
    assert text_encoder(long, 12).shape == (12, 384)
    # The direction word's own state differs far more than the pooled sentences do.
    right = text_encoder(RIGHT, 12)
    word = length - 1  # "left" / "right", just before [SEP]
    token_cosine = float(torch.cosine_similarity(states[word], right[word], dim=0))
    sentence_cosine = float(sentence @ text_encoder(RIGHT))
    assert token_cosine < sentence_cosine - 0.05


def test_attention_pool_ignores_padding_and_gives_unit_vectors():
    torch.manual_seed(0)
    pool = AttentionPool(16, queries=3, heads=2).eval()
    tokens = torch.randn(2, 6, 16)
    padding = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    with torch.no_grad():
        first = pool(tokens, padding)
        noisy = tokens.clone()
        noisy[0, 4:] = 100.0  # whatever sits in padded rows is not read
        second = pool(noisy, padding)
    assert first.shape == (2, 3, 16)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(2, 3))


def test_direction_word_reaches_the_pixel_detector(text_encoder):
    torch.manual_seed(0)
    config = tokens_config(action_space="ee_delta", position_aux=True, position_token=True,
                           position_from="pixels", keypoint_crop=[0.5, 0.0, 1.0, 1.0])
    model = VLAModel(config).eval()
    language = torch.stack([text_encoder(LEFT, 12), text_encoder(RIGHT, 12)])
    with torch.no_grad():
        fusion_tokens, readers = model._language(language, 2)
    instruction = readers["detector"]
    assert fusion_tokens.shape == (2, 2, 32) and instruction.shape == (2, 384)
    assert not torch.allclose(instruction[0], instruction[1], atol=1e-4)
    # One pool query per fusion token and one for the detector.
    assert model.language_pool.queries.shape == (3, 384)
    with pytest.raises(ValueError, match="language_input='tokens'"):
        model._language(torch.stack([text_encoder(LEFT), text_encoder(RIGHT)]), 2)


def test_tokens_checkpoint_round_trip_and_backend(text_encoder, tmp_path):
    from vla_bringup.policy.vla.backend import VLAPolicy
    with pytest.raises(ValueError, match="language_input"):
        tokens_config(language_input="words")
    with pytest.raises(ValueError, match="language_max_tokens"):
        tokens_config(language_max_tokens=0)
    torch.manual_seed(0)
    model = VLAModel(tokens_config()).eval()
    folder = model.save_checkpoint(tmp_path / "ckpt")
    loaded = load_checkpoint(folder)
    assert loaded.config.language_input == "tokens"
    policy = VLAPolicy(model=loaded, text_encoder=text_encoder, device="cpu")
    skill = SkillSpec("s1", "push", LEFT, "red_cube", "left")
    policy.reset(skill)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    chunk = policy.infer(Observation(1.0, JOINTS, HOME, skill, image=image))
    assert chunk.positions.shape == (4, 9) and np.all(np.isfinite(chunk.positions))
    assert policy._embedding(LEFT).shape == (12, 384)  # what the backend feeds the model


def test_relative_place_follows_the_latched_start_with_a_direction_from_the_words(text_encoder):
    from vla_bringup.policy.vla.backend import VLAPolicy
    with pytest.raises(ValueError, match="place_relative needs place_memory"):
        tokens_config(action_space="ee_delta", position_aux=True, position_token=True,
                      start_memory=True, place_relative=True)
    torch.manual_seed(0)
    config = tokens_config(action_space="ee_delta", position_aux=True, position_token=True,
                           position_from="pixels", keypoint_crop=[0.5, 0.0, 1.0, 1.0],
                           start_memory=True, place_memory=True, place_relative=True)
    model = VLAModel(config).eval()
    # Its own pool query, besides the fusion's two and the detector's.
    assert model.language_pool.queries.shape == (4, 384)
    with torch.no_grad():  # weight 0 on the detector, offset (0, 1.2, 0) x 0.1 m: a push left
        model.place_blend[-1].weight.zero_()
        model.place_blend[-1].bias.copy_(torch.tensor([-30.0, 0.0, 1.2, 0.0]))
    language = torch.stack([text_encoder(LEFT, 12)] * 2)
    crops = torch.zeros(2, 3, 32, 64)
    state = torch.cat([torch.zeros(2, 8), torch.tensor([[0.4, 0.0, 0.8, 3.1]] * 2)], 1)
    start = torch.tensor([[0.5, 0.1, 0.65, 0.0, 0.0, 0.0], [0.6, -0.1, 0.65, 0.0, 0.0, 0.0]])
    features = torch.zeros(2, model.vision.out_channels, model.vision.grid, model.vision.grid)
    with torch.no_grad():
        outputs = model(None, language, state, vision_features=features, keypoint_crops=crops,
                        start_positions=start)
        place = model.latched_positions(outputs)[:, 3:]
        torch.testing.assert_close(place, start[:, :3] + torch.tensor([0.0, 0.12, 0.0]))
        # Without a start (a skill's first frame) the anchor is the frame's own target.
        first = model(None, language, state, vision_features=features, keypoint_crops=crops)
        metres = model.latched_positions(first)
        torch.testing.assert_close(metres[:, 3:], metres[:, :3] + torch.tensor([0.0, 0.12, 0.0]))
    policy = VLAPolicy(model=model, text_encoder=text_encoder, device="cpu")
    skill = SkillSpec("s1", "push", LEFT, "red_cube", "left")
    policy.reset(skill)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    chunk = policy.infer(Observation(1.0, JOINTS, HOME, skill, image=image))
    assert np.all(np.isfinite(chunk.positions)) and policy.latched_start().shape == (1, 6)


def test_place_blend_noise_reaches_only_the_detectors_share_while_training():
    with pytest.raises(ValueError, match="place_blend_noise"):
        tokens_config(place_blend_noise=0.05)  # no place_relative
    torch.manual_seed(0)
    config = tokens_config(action_space="ee_delta", position_aux=True, position_token=True,
                           position_from="pixels", keypoint_crop=[0.5, 0.0, 1.0, 1.0],
                           start_memory=True, place_memory=True, place_relative=True,
                           place_blend_noise=0.05)
    model = VLAModel(config)
    positions = torch.randn(256, 6)
    instruction = torch.randn(256, 384)
    start = torch.rand(256, 6)

    def blended(weight_logit):
        with torch.no_grad():
            model.place_blend[-1].weight.zero_()
            model.place_blend[-1].bias.copy_(torch.tensor([weight_logit, 0.0, 1.2, 0.0]))
            return model._metres(model._blend_place(positions, instruction, start, None))[:, 3:]
    model.eval()
    exact = blended(30.0)  # all weight on the detector
    model.train()
    spread = (blended(30.0) - exact).std().item()
    assert 0.04 < spread < 0.06  # the noise, in metres
    relative = blended(-30.0)  # all weight on "start + offset": no noise reaches it
    torch.testing.assert_close(relative, start[:, :3] + torch.tensor([0.0, 0.12, 0.0]))


def test_skill_input_tells_the_head_and_the_place_blend_which_primitive(text_encoder, tmp_path):
    from vla_bringup.policy.vla.backend import VLAPolicy
    from vla_bringup.policy.vla.model import skill_indices
    torch.manual_seed(0)
    config = tokens_config(action_space="ee_delta", position_aux=True, position_token=True,
                           position_from="pixels", keypoint_crop=[0.5, 0.0, 1.0, 1.0],
                           start_memory=True, place_memory=True, place_relative=True,
                           skill_input=True)
    model = VLAModel(config).eval()
    language = torch.stack([text_encoder(LEFT, 12)] * 2)
    state = torch.cat([torch.zeros(2, 8), torch.tensor([[0.4, 0.0, 0.8, 3.1]] * 2)], 1)
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="skill primitive"):
        model(images, language, state)
    with pytest.raises(ValueError, match="unknown skill primitive"):
        skill_indices(["pick", "wave"])
    with torch.no_grad():
        push = model(images, language, state, skill=skill_indices(["push", "push"]))
        place = model(images, language, state, skill=skill_indices(["place", "place"]))
    # Same image, words and state: only the primitive differs, and both the chunk and the
    # blended place (the blend reads it beside the words) change with it.
    assert not torch.allclose(push["actions"], place["actions"])
    assert not torch.allclose(push["positions"][:, 3:], place["positions"][:, 3:])
    torch.testing.assert_close(push["positions"][:, :3], place["positions"][:, :3])
    model.save_checkpoint(tmp_path / "skill")
    loaded = load_checkpoint(tmp_path / "skill")
    assert loaded.config.skill_input
    torch.testing.assert_close(loaded.skill_embedding.weight, model.skill_embedding.weight)
    policy = VLAPolicy(model=loaded, text_encoder=text_encoder, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    chunks = {}
    for primitive in ("push", "place"):
        skill = SkillSpec("s1", primitive, LEFT, "red_cube", "left")
        policy.reset(skill)
        chunks[primitive] = policy.infer(Observation(1.0, JOINTS, HOME, skill, image=image))
    assert not np.allclose(chunks["push"].positions, chunks["place"].positions)
    skill = SkillSpec("s2", "wave", LEFT, "red_cube", "left")
    policy.reset(skill)
    with pytest.raises(ValueError, match="unknown skill primitive"):
        policy.infer(Observation(1.0, JOINTS, HOME, skill, image=image))


def test_head_language_off_leaves_the_words_to_the_detector(text_encoder, tmp_path):
    torch.manual_seed(0)
    common = dict(action_space="ee_delta", position_aux=True, position_token=True,
                  position_from="pixels", keypoint_crop=[0.5, 0.0, 1.0, 1.0],
                  start_memory=True, place_memory=True, skill_input=True)
    with pytest.raises(ValueError, match="head_language False needs skill_input"):
        tokens_config(**{**common, "skill_input": False}, head_language=False)
    blind, reading = (VLAModel(tokens_config(**common, head_language=flag)).eval()
                      for flag in (False, True))
    assert blind.language_proj is None and blind.language_pool.queries.shape == (1, 384)
    assert not any(key.startswith("language_proj") for key in blind.trainable_state_dict())
    language = torch.stack([text_encoder(LEFT, 12), text_encoder(RIGHT, 12)])
    other = torch.stack([text_encoder("put the blue cube in the tray", 12)] * 2)
    state = torch.cat([torch.zeros(2, 8), torch.tensor([[0.4, 0.0, 0.8, 3.1]] * 2)], 1)
    images = torch.rand(2, 3, 64, 64)
    skill = torch.zeros(2, dtype=torch.int64)
    # Positions given (as an oracle trainer would) and latched starts fixed: the only way
    # words could reach the chunk is the fusion, which a blind head does not have.
    given = torch.randn(2, 6)
    start = torch.rand(2, 6)
    outputs = {}
    with torch.no_grad():
        for name, model in (("blind", blind), ("reading", reading)):
            outputs[name] = [model(images, words, state, given_positions=given,
                                   start_positions=start, skill=skill)
                             for words in (language, other)]
    first, second = outputs["blind"]
    torch.testing.assert_close(first["actions"], second["actions"])
    assert not torch.allclose(first["positions"], second["positions"])  # the detector reads
    first, second = outputs["reading"]
    assert not torch.allclose(first["actions"], second["actions"])
    blind.save_checkpoint(tmp_path / "blind")
    loaded = load_checkpoint(tmp_path / "blind")
    assert not loaded.config.head_language and loaded.language_proj is None
    with torch.no_grad():
        again = loaded(images, language, state, given_positions=given, start_positions=start,
                       skill=skill)
    torch.testing.assert_close(again["actions"], outputs["blind"][0]["actions"])
