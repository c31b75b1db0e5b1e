"""`head_language: false`: the action and done heads read no words; only the detector does.

Why it exists: held-out stack places were read as finished picks by the head's reading of the
words, while the detector and the plan already say which cube and where. These tests check the
plumbing: the head's outputs do not move with the words when the positions are given, the
detector still reads them, the option's requirements fail clearly, and checkpoints keep it.
"""
import pytest
import torch

from vla_bringup.policy.vla.config import VLAConfig
from vla_bringup.policy.vla.model import VLAModel, load_checkpoint, skill_indices

pytestmark = pytest.mark.usefixtures("torch_one_thread")

WORD_FREE = dict(skill_input=True, position_aux=True, position_token=True,
                 position_from="pixels", keypoint_crop=[0.5, 0.25, 1.0, 1.0],
                 keypoint_channels=8)


def tiny_model(**overrides) -> VLAModel:
    torch.manual_seed(0)
    config = VLAConfig(**{**dict(image_size=64, d_model=32, n_heads=2, fusion_layers=1,
                                 head_layers=1, keypoints=4, action_horizon=4,
                                 language_tokens=2, dropout=0.0, language_input="tokens",
                                 language_max_tokens=6, **WORD_FREE), **overrides})
    return VLAModel(config, pretrained=False).eval()


def _forward(model: VLAModel, language_seed: int, given_positions=None):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    state = torch.randn(2, model.config.state_dim, generator=generator) * 0.1
    language = torch.randn(2, 6, 384, generator=torch.Generator().manual_seed(language_seed))
    with torch.no_grad():
        return model(images, language, state, given_positions=given_positions,
                     skill=skill_indices(["pick", "place"]))


def test_with_positions_given_the_heads_ignore_the_words_and_the_detector_does_not():
    positions = torch.full((2, 6), 0.3)
    word_free = tiny_model(head_language=False)
    one, other = _forward(word_free, 2, positions), _forward(word_free, 3, positions)
    for name in ("actions", "done_logit", "progress_logit"):
        torch.testing.assert_close(one[name], other[name])
    # Which cube and where are still read from the words, by the detector.
    assert not torch.allclose(_forward(word_free, 2)["positions"],
                              _forward(word_free, 3)["positions"])
    reading = tiny_model()  # the default: the fusion reads the words too
    assert not torch.allclose(_forward(reading, 2, positions)["actions"],
                              _forward(reading, 3, positions)["actions"])
    # The word-free model has no projection of the words into the fusion, and its pool asks
    # only the detector's question.
    assert word_free.language_proj is None and reading.language_proj is not None
    assert word_free.language_pool.queries.shape[0] == \
        reading.language_pool.queries.shape[0] - reading.config.language_tokens


@pytest.mark.parametrize("missing", ["skill_input", "position_token", "position_from"])
def test_a_word_free_head_needs_the_primitive_and_the_detector(missing):
    settings = {**WORD_FREE, "head_language": False}
    settings[missing] = "keypoints" if missing == "position_from" else False
    with pytest.raises(ValueError, match="head_language False needs"):
        VLAConfig(**settings)
    if missing == "skill_input":  # the primitive may come as skill_heads instead
        assert not VLAConfig(**{**settings, "skill_heads": True}).head_language


def test_a_word_free_checkpoint_loads_as_itself(tmp_path):
    model = tiny_model(head_language=False)
    model.save_checkpoint(tmp_path)
    loaded = load_checkpoint(tmp_path, pretrained=False)
    assert loaded.config.head_language is False and loaded.language_proj is None
    positions = torch.full((2, 6), 0.3)
    torch.testing.assert_close(_forward(loaded, 2, positions)["actions"],
                               _forward(model, 2, positions)["actions"])
