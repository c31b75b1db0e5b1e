"""`skill_heads`: one copy of the action, done and progress outputs per skill primitive.

Why it exists: with one copy, a place's first frames and a pick's last ones look alike, and only
the words told them apart, so an unseen place text was read as a finished pick. These tests
check that each primitive's outputs come from its own copy and no other, for every head kind,
that a row's primitive picks its copy within a mixed batch, and that a missing primitive fails.
"""
import numpy as np
import pytest
import torch

from vla_bringup.policy.base import SKILLS
from vla_bringup.policy.vla.config import VLAConfig
from vla_bringup.policy.vla.model import load_checkpoint, skill_indices

from test_vla_skill_input import _forward, backend_chunks, tiny_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

HEAD_KINDS = [dict(), dict(head_arch="mlp"), dict(head="discrete", action_bins=8)]
OUTPUTS = ("done_logit", "progress_logit")


def _action_output(outputs):
    return outputs["actions"] if "actions" in outputs else outputs["action_logits"]


@pytest.mark.parametrize("kind", HEAD_KINDS, ids=["transformer", "mlp", "discrete"])
def test_each_primitive_reads_its_own_outputs_and_no_others(kind):
    model = tiny_model(skill_heads=True, **kind)
    assert model.skill_embedding is None  # the primitive picks outputs; it is not an input
    before = {name: _forward(model, skill_indices([name, name])) for name in ("pick", "place")}
    assert not torch.allclose(_action_output(before["pick"]), _action_output(before["place"]))
    for name in OUTPUTS:
        assert not torch.allclose(before["pick"][name], before["place"][name]), name
    # A row's own primitive picks its copy within a mixed batch.
    mixed = _forward(model, skill_indices(["pick", "place"]))
    torch.testing.assert_close(_action_output(mixed)[0], _action_output(before["pick"])[0])
    torch.testing.assert_close(_action_output(mixed)[1], _action_output(before["place"])[1])
    torch.testing.assert_close(mixed["done_logit"][1], before["place"]["done_logit"][1])
    # Changing the last layer's weights of every copy but pick's leaves pick's outputs alone.
    _shift_other_copies(model, "pick")
    after = {name: _forward(model, skill_indices([name, name])) for name in ("pick", "place")}
    torch.testing.assert_close(_action_output(after["pick"]), _action_output(before["pick"]))
    torch.testing.assert_close(after["pick"]["done_logit"], before["pick"]["done_logit"])
    assert not torch.allclose(after["place"]["done_logit"], before["place"]["done_logit"])


def _output_layers(model):
    head = model.head
    if head.arch == "transformer":
        return [head.actions, head.summary]
    return [head.net[-1][-1] if isinstance(head.net[-1], torch.nn.Sequential) else head.net[-1]]


def _shift_other_copies(model, keep: str) -> None:
    """Add 0.5 to the last layers' weights of every primitive's copy but `keep`'s."""
    with torch.no_grad():
        for layer in _output_layers(model):
            copies = layer.weight.view(len(SKILLS), -1, layer.weight.shape[-1])
            for index, name in enumerate(SKILLS):
                if name != keep:
                    copies[index] += 0.5


def test_a_missing_primitive_fails_clearly_and_a_checkpoint_keeps_the_copies(tmp_path):
    model = tiny_model(skill_heads=True)
    with pytest.raises(ValueError, match="reads the skill primitive"):
        _forward(model, None)
    with pytest.raises(ValueError, match="one per skill primitive"):
        model.head(torch.zeros(1, 5, model.config.d_model))  # the head alone, no index
    loaded = load_checkpoint(model.save_checkpoint(tmp_path / "ckpt"), pretrained=False)
    assert loaded.config.skill_heads and loaded.head.copies == 3
    torch.testing.assert_close(_forward(loaded, skill_indices(["push", "place"]))["done_logit"],
                               _forward(model, skill_indices(["push", "place"]))["done_logit"])


def test_without_the_option_the_head_keeps_its_shapes_and_old_configs_load():
    """One copy has the layer sizes of checkpoints from before the option, so they load."""
    plain = tiny_model()
    d, width = plain.config.d_model, plain.config.action_dim
    assert plain.head.copies == 1
    assert tuple(plain.head.actions.weight.shape) == (width, d)
    assert tuple(plain.head.summary.weight.shape) == (2, d)
    stored = plain.config.to_dict()
    stored.pop("skill_heads")
    assert not VLAConfig.from_dict(stored).skill_heads


def test_the_backend_picks_the_copy_of_the_skill_it_runs():
    model = tiny_model(skill_heads=True)
    chunk = backend_chunks(model)
    pick, push = chunk("pick"), chunk("push")
    assert np.all(np.isfinite(pick.positions)) and np.all(np.isfinite(push.positions))
    assert not np.allclose(pick.positions, push.positions)
    np.testing.assert_allclose(chunk("pick").positions, pick.positions)
    # Poison every copy but push's: the push chunk stays, so the backend sent "push".
    _shift_other_copies(model, "push")
    np.testing.assert_allclose(chunk("push").positions, push.positions)
    assert not np.allclose(chunk("pick").positions, pick.positions)
