"""`skill_input`: the skill controller's primitive (pick, place, push) as a model input.

Why it exists: a stack's place worded in unseen words was read as a finished pick, while the
controller knew the skill was a place. These tests check the plumbing: the primitive changes
what a skill_input model predicts and nothing else's, a missing or unknown primitive fails
clearly, checkpoints keep the option, and the backend feeds the observation's own primitive.
"""
import numpy as np
import pytest
import torch

from vla_bringup.policy.base import SKILLS, Observation, SkillSpec
from vla_bringup.policy.vla.backend import VLAPolicy
from vla_bringup.policy.vla.config import VLAConfig
from vla_bringup.policy.vla.model import VLAModel, load_checkpoint, skill_indices

pytestmark = pytest.mark.usefixtures("torch_one_thread")

HOME = np.array([0.0, -0.4, 0.0, -2.4, 0.0, 2.0, np.pi / 4, 0.04, 0.04])
TEXT = "pick up the red cube"


def tiny_model(**overrides) -> VLAModel:
    torch.manual_seed(0)
    config = VLAConfig(**{**dict(image_size=64, d_model=32, n_heads=2, fusion_layers=1,
                                 head_layers=1, keypoints=4, action_horizon=4,
                                 language_tokens=2, dropout=0.0), **overrides})
    return VLAModel(config, pretrained=False).eval()


def _forward(model: VLAModel, skill):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    language = torch.nn.functional.normalize(torch.randn(2, 384, generator=generator), dim=-1)
    state = torch.randn(2, model.config.state_dim, generator=generator) * 0.1
    with torch.no_grad():
        return model(images, language, state, skill=skill)


def test_the_primitive_changes_a_skill_input_models_outputs_and_no_other_models():
    model = tiny_model(skill_input=True)
    pick = _forward(model, skill_indices(["pick", "pick"]))
    place = _forward(model, skill_indices(["place", "place"]))
    for name in ("actions", "done_logit", "progress_logit"):
        assert not torch.allclose(pick[name], place[name]), name
    # Each example reads its own primitive: a mixed batch gives each row its own answer.
    mixed = _forward(model, skill_indices(["pick", "place"]))
    torch.testing.assert_close(mixed["done_logit"][0], pick["done_logit"][0])
    torch.testing.assert_close(mixed["done_logit"][1], place["done_logit"][1])
    plain = tiny_model()
    assert plain.skill_embedding is None
    torch.testing.assert_close(_forward(plain, None)["actions"],
                               _forward(plain, skill_indices(["place", "push"]))["actions"])


def test_a_missing_or_unknown_primitive_fails_clearly():
    model = tiny_model(skill_input=True)
    with pytest.raises(ValueError, match="reads the skill primitive"):
        _forward(model, None)
    with pytest.raises(ValueError, match="reads the skill primitive"):
        _forward(model, skill_indices(["pick"]))  # one index for a batch of two
    with pytest.raises(ValueError, match="reads the skill primitive"):
        _forward(model, torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="unknown skill primitives \\['lift'\\]"):
        skill_indices(["pick", "lift"])
    assert skill_indices(list(SKILLS)).tolist() == [0, 1, 2]


def test_a_checkpoint_keeps_the_option_and_its_vectors(tmp_path):
    model = tiny_model(skill_input=True)
    folder = model.save_checkpoint(tmp_path / "ckpt")
    loaded = load_checkpoint(folder, pretrained=False)
    assert loaded.config.skill_input
    torch.testing.assert_close(loaded.skill_embedding.weight, model.skill_embedding.weight)
    # A config.json from before the option loads as a model without it.
    stored = tiny_model().config.to_dict()
    stored.pop("skill_input")
    assert not VLAConfig.from_dict(stored).skill_input


def test_weights_of_other_shapes_are_refused_by_name(tmp_path):
    """Same tensor names, other shapes (as an old skill_input checkpoint whose place blend read
    the primitive): a clear error naming the tensor, not torch's size mismatch."""
    import json
    folder = tiny_model(skill_input=True).save_checkpoint(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_model": 64}))
    with pytest.raises(ValueError, match="does not fit its config: .*\\(config: "):
        load_checkpoint(folder, pretrained=False)


def backend_chunks(model: VLAModel):
    """A function primitive -> the backend's chunk for one skill of that primitive, with the
    same text, image and joints every time: only the primitive differs."""
    policy = VLAPolicy(model=model, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    joints = list(model.config.joint_names)

    def chunk(primitive: str):
        skill = SkillSpec(f"s-{primitive}", primitive, TEXT, "red_cube", "left")
        policy.reset(skill)
        return policy.infer(Observation(0.0, joints, HOME, skill, image))
    return chunk


def test_the_backend_feeds_the_observations_own_primitive():
    chunk = backend_chunks(tiny_model(skill_input=True))
    pick, push = chunk("pick"), chunk("push")
    assert np.all(np.isfinite(pick.positions)) and np.all(np.isfinite(push.positions))
    assert not np.allclose(pick.positions, push.positions)
    np.testing.assert_allclose(chunk("pick").positions, pick.positions)
    with pytest.raises(ValueError, match="unknown skill primitives"):
        chunk("wave")
