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


def test_place_blend_weighs_the_detector_against_start_plus_offset():
    torch.manual_seed(0)
    config = tokens_config(action_space="ee_delta", position_aux=True, position_token=True,
                           position_from="pixels", keypoint_crop=[0.5, 0.0, 1.0, 1.0],
                           start_memory=True, place_memory=True, place_relative=True)
    model = VLAModel(config).eval()
    positions = torch.randn(256, 6)
    instruction = torch.randn(256, 384)
    start = torch.rand(256, 6)

    def blended(weight_logit):
        with torch.no_grad():
            model.place_blend[-1].weight.zero_()
            model.place_blend[-1].bias.copy_(torch.tensor([weight_logit, 0.0, 1.2, 0.0]))
            return model._metres(model._blend_place(positions, instruction, start))
    detector = blended(30.0)  # all weight on the detector's place
    torch.testing.assert_close(detector, model._metres(positions))
    relative = blended(-30.0)  # all weight on "start + offset"; the target is left alone
    torch.testing.assert_close(relative[:, 3:], start[:, :3] + torch.tensor([0.0, 0.12, 0.0]))
    torch.testing.assert_close(relative[:, :3], detector[:, :3])


def test_removed_options_load_when_off_and_fail_clearly_when_on():
    stored = tokens_config().to_dict()
    # A config.json written while these options existed carries them at their "off" value.
    old = {**stored, "place_blend_noise": 0.0}
    assert VLAConfig.from_dict(old) == VLAConfig.from_dict(stored)
    with pytest.raises(ValueError, match="place_blend_noise was removed.*commit 1522412"):
        VLAConfig.from_dict({**stored, "place_blend_noise": 0.02})
    with pytest.raises(ValueError, match="unknown VLAConfig fields"):
        VLAConfig.from_dict({**stored, "no_such_option": 1})
