"""The moving average of trained weights (policy/vla/weight_average.py) and its use by the
trainer: what is validated and saved are the averaged weights, and the model's own come back."""
import pytest
import torch
from torch import nn

from vla_bringup.policy.vla.weight_average import WeightAverage


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[1].bias.requires_grad_(False)  # frozen: neither averaged nor swapped
    return model


def test_decay_is_checked_and_warms_up_to_its_cap():
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="decay"):
            WeightAverage(_model(), bad)
    average = WeightAverage(_model(), 0.99)
    assert average.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    average.updates = 10_000
    assert average.current_decay() == 0.99


def test_update_moves_the_shadow_by_one_minus_the_decay():
    model = _model()
    average = WeightAverage(model, 0.5)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update(model)  # first update: decay min(0.5, 2 / 11)
    expected = start + (1.0 - 2.0 / 11.0) * 1.0
    assert torch.allclose(average.shadow["0.weight"], expected)
    assert "1.bias" not in average.shadow


def test_applied_swaps_the_average_in_and_restores_the_weights_even_on_error():
    model = _model()
    average = WeightAverage(model, 0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(2.0)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with average.applied(model):
        # The shadow was never updated: inside, the trainable weights are the initial ones.
        assert torch.equal(model[0].weight, before["0.weight"])
        assert torch.equal(model[1].bias, trained["1.bias"])  # frozen stays as it is
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    with pytest.raises(RuntimeError, match="boom"):
        with average.applied(model):
            raise RuntimeError("boom")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
