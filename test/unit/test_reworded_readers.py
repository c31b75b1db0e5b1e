"""`reworded_inputs: readers`: rewordings reach the pixel detector, the action head reads the text.

Why it exists: rewordings of the training texts taught the detector unseen nouns, but when the
whole model read them closed-loop success fell. These tests check the plumbing: the readers
answer to `reader_language` alone, the head to `language` alone, and the trainer hands the
rewording to the readers and the text itself to the fusion, in training steps only.
"""
import numpy as np
import pytest
import torch

from vla_bringup.cli import train as train_cli
from vla_bringup.cli.train_cache import cache_language
from vla_bringup.policy.vla.model import VLAModel

from test_train_eval import TINY_MODEL, TINY_TRAIN, demos  # noqa: F401 (a fixture)
from test_vla_head_language import tiny_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TOKENS_MODEL = {**TINY_MODEL, "language_input": "tokens", "language_max_tokens": 12,
                "action_space": "ee_delta", "position_aux": True, "position_token": True,
                "position_from": "pixels", "keypoint_crop": [0.5, 0.25, 1.0, 1.0],
                "keypoint_channels": 8, "start_memory": True}


def test_readers_read_reader_language_and_the_head_reads_language():
    model = tiny_model(skill_input=False)
    text, other = (torch.randn(2, 6, 384, generator=torch.Generator().manual_seed(seed))
                   for seed in (2, 3))
    given = torch.full((2, 6), 0.3)  # fixed positions cut the detector's path into the head

    def forward(language, reader_language=None, given_positions=None):
        generator = torch.Generator().manual_seed(1)
        images = torch.randn(2, 3, 64, 64, generator=generator)
        state = torch.randn(2, model.config.state_dim, generator=generator) * 0.1
        with torch.no_grad():
            return model(images, language, state, given_positions=given_positions,
                         reader_language=reader_language)

    mixed = forward(text, other)
    torch.testing.assert_close(mixed["positions"], forward(other)["positions"])
    assert not torch.allclose(mixed["positions"], forward(text)["positions"])
    torch.testing.assert_close(forward(text, other, given)["actions"],
                               forward(text, None, given)["actions"])
    assert not torch.allclose(forward(other, None, given)["actions"],
                              forward(text, None, given)["actions"])
    # Without reader_language, both read `language` (the default path is unchanged).
    torch.testing.assert_close(forward(text, text)["actions"], forward(text)["actions"])


def test_bad_settings_fail_clearly(demos, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="reworded_inputs must be one of"):
        train_cli.TrainConfig(instruction_variants=2, reworded_inputs="head")
    with pytest.raises(ValueError, match="needs instruction_variants"):
        train_cli.TrainConfig(reworded_inputs="readers")
    # A model whose only reader of the words is the fusion has nothing to reword for.
    config = train_cli.TrainConfig(**{**TINY_TRAIN, "steps": 1, "instruction_variants": 2,
                                      "reworded_inputs": "readers"})
    plain = {**TINY_MODEL, "language_input": "tokens", "language_max_tokens": 12}
    with pytest.raises(ValueError, match="readers besides the fusion"):
        train_cli.train(demos, tmp_path / "x", plain, config, progress=False,
                        log=lambda *a: None)


def test_training_hands_the_rewording_to_the_readers_only(demos, tmp_path,  # noqa: F811
                                                          monkeypatch):
    calls = []
    original_forward = VLAModel.forward

    def recording_forward(self, images, language, state, **kwargs):
        calls.append((self.training, language.clone(), kwargs.get("reader_language")))
        return original_forward(self, images, language, state, **kwargs)

    monkeypatch.setattr(VLAModel, "forward", recording_forward)
    config = train_cli.TrainConfig(**{**TINY_TRAIN, "steps": 3, "instruction_variants": 3,
                                      "reworded_fraction": 1.0, "reworded_inputs": "readers"})
    log = train_cli.train(demos, tmp_path / "readers", dict(TOKENS_MODEL), config,
                          progress=False, log=lambda *a: None)
    assert all(np.isfinite(h["loss"]) for h in log["history"])
    table = cache_language(train_cli.load_dataset(demos), None, 12, 3)
    embeddings = torch.from_numpy(table["embeddings"])
    originals = set(table["index"].tolist())

    def rows_of(language):
        return [int((embeddings - row).abs().amax((1, 2)).argmin()) for row in language]

    training = [call for call in calls if call[0]]
    assert training and all(call[2] is None for call in calls if not call[0])
    for _, language, reader_language in training:
        assert set(rows_of(language)) <= originals  # the fusion reads the text itself
        # With reworded_fraction 1 every reader row is a rewording of its own example's text.
        for own, reworded in zip(rows_of(language), rows_of(reader_language)):
            assert reworded != own and reworded in table["variants"][own][1:]
