"""The LeRobot adapter: checkpoint-folder parsing, the joint <-> policy-vector mapping, input
validation and the missing-lerobot error (no lerobot needed), plus inference through a tiny
randomly initialised ACT policy saved with `save_pretrained` (skipped where lerobot is absent).

The tiny ACT has a ResNet-18 backbone without pretrained weights (pretrained_backbone_weights
None), one 32-wide encoder / decoder layer and no VAE; building and saving it takes well under a
second. Its normalisation statistics are written the way the installed lerobot keeps them: as
buffers in model.safetensors (lerobot < 0.4) or in the processor files (lerobot >= 0.4).
"""
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from vla_bringup.core.robot import PANDA_JOINT_NAMES
from vla_bringup.policy.adapters.lerobot_policy import (
    INSTALL_HINT, LAYOUTS, LeRobotPolicy, actions_to_joints, image_to_tensor, import_lerobot,
    joints_to_state, panda_joints, read_checkpoint_info, resolve_layout)
from vla_bringup.policy.base import ActionChunk, Observation, PolicyBackend, SkillSpec

pytestmark = pytest.mark.usefixtures("torch_one_thread")

HOME = np.array([0.0, -0.4, 0.0, -2.4, 0.0, 2.0, np.pi / 4, 0.03, 0.01])
SKILL = SkillSpec("s1", "pick", "pick up the red cube", "red_cube")
IMAGE_SHAPE = (3, 48, 64)


def image(seed: int = 0, shape=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def observation(img=None, joints=HOME, names=PANDA_JOINT_NAMES) -> Observation:
    return Observation(0.0, list(names), np.asarray(joints, dtype=float), SKILL,
                       image(0) if img is None else img)


def write_config(folder, *, policy_type="act", action_dim=8, state_dim=8,
                 images=("observation.images.front",), extra_inputs=None, weights=True, **extra):
    """A LeRobot-style config.json (+ an empty model.safetensors) written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {key: {"type": "VISUAL", "shape": list(IMAGE_SHAPE)} for key in images}
    if state_dim:
        inputs["observation.state"] = {"type": "STATE", "shape": [state_dim]}
    inputs.update(extra_inputs or {})
    config = {"type": policy_type, "input_features": inputs,
              "output_features": {"action": {"type": "ACTION", "shape": [action_dim]}},
              "chunk_size": 10, "n_action_steps": 5, **extra}
    (folder / "config.json").write_text(json.dumps(config))
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    return folder


# ============================================================ without lerobot
def test_missing_lerobot_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lerobot", None)  # import lerobot -> ImportError
    with pytest.raises(ImportError, match="pip install lerobot"):
        import_lerobot()
    folder = write_config(tmp_path / "ckpt")
    with pytest.raises(ImportError, match="pip install lerobot") as error:
        LeRobotPolicy(folder, device="cpu")
    assert INSTALL_HINT in str(error.value)


def test_layouts_are_inferred_from_the_dimension_or_checked():
    assert resolve_layout(None, 8, "action") == "arm_gripper"
    assert resolve_layout(None, 9, "action") == "joints"
    assert resolve_layout("joints", 9, "state") == "joints"
    with pytest.raises(ValueError, match="6 dimensions"):
        resolve_layout(None, 6, "action")
    with pytest.raises(ValueError, match="9 dimensions"):
        resolve_layout("arm_gripper", 9, "action")
    with pytest.raises(ValueError, match="layout must be one of"):
        resolve_layout("ee_delta", 7, "action")


def test_arm_gripper_actions_apply_the_gripper_to_both_fingers():
    rows = np.array([[0.1, 0.2, 0.3, -1.0, 0.5, 1.5, 0.7, 0.02],
                     [0.0, 0.0, 0.0, -2.0, 0.0, 2.0, 0.0, 0.5],    # beyond the finger travel
                     [0.0, 0.0, 0.0, -2.0, 0.0, 2.0, 0.0, -0.1]])  # below closed
    joints = actions_to_joints(rows, "arm_gripper")
    assert joints.shape == (3, 9)
    np.testing.assert_array_equal(joints[:, :7], rows[:, :7])
    np.testing.assert_allclose(joints[:, 7:], [[0.02, 0.02], [0.04, 0.04], [0.0, 0.0]])
    # gripper_scale: policy units per metre of finger travel (25 = a 0..1 gripper)
    scaled = actions_to_joints(np.array([[0.0] * 7 + [0.5]]), "arm_gripper", gripper_scale=25.0)
    np.testing.assert_allclose(scaled[0, 7:], [0.02, 0.02])


def test_joint_actions_map_one_to_one():
    rows = np.array([[0.1, 0.2, 0.3, -1.0, 0.5, 1.5, 0.7, 0.01, 0.03]])
    np.testing.assert_array_equal(actions_to_joints(rows, "joints"), rows)
    with pytest.raises(ValueError, match=r"\(H, 9\)"):
        actions_to_joints(rows[:, :8], "joints")
    with pytest.raises(ValueError, match=r"\(H, 8\)"):
        actions_to_joints(rows[0, :8], "arm_gripper")  # 1-D
    with pytest.raises(ValueError, match="NaN"):
        actions_to_joints(np.full((2, 9), np.nan), "joints")


def test_state_vectors():
    np.testing.assert_allclose(joints_to_state(HOME, "arm_gripper"), [*HOME[:7], 0.02])
    np.testing.assert_allclose(joints_to_state(HOME, "joints", gripper_scale=25.0),
                               [*HOME[:7], 0.75, 0.25])
    with pytest.raises(ValueError, match=r"\(9,\)"):
        joints_to_state(HOME[:8], "joints")


def test_image_conversion_and_validation():
    img = image(1)
    pixels = image_to_tensor(img)
    assert pixels.shape == (1, 3, 48, 64) and pixels.dtype == torch.float32
    np.testing.assert_allclose(pixels[0].permute(1, 2, 0).numpy(), img / 255.0, atol=1e-7)
    resized = image_to_tensor(image(2, (96, 128)), (48, 64))
    assert resized.shape == (1, 3, 48, 64)
    assert 0.0 <= float(resized.min()) and float(resized.max()) <= 1.0
    flat = np.full((30, 40, 3), 200, np.uint8)  # a constant image stays constant when resized
    np.testing.assert_allclose(image_to_tensor(flat, (48, 64)).numpy(), 200 / 255.0, atol=1e-6)
    for bad in (img.astype(np.float32), img[..., 0], np.zeros((48, 64, 4), np.uint8),
                np.zeros((0, 64, 3), np.uint8)):
        with pytest.raises(ValueError, match="image must"):
            image_to_tensor(bad)
    with pytest.raises(ValueError, match="camera image"):
        image_to_tensor(None)


def test_joint_extraction_reorders_and_rejects_nan():
    names = list(reversed(PANDA_JOINT_NAMES))
    np.testing.assert_array_equal(panda_joints(observation(joints=HOME[::-1], names=names)), HOME)
    bad = HOME.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        panda_joints(observation(joints=bad))
    with pytest.raises(ValueError, match="lacks joints"):
        panda_joints(observation(joints=HOME[:7], names=PANDA_JOINT_NAMES[:7]))


def test_checkpoint_info_from_config_json(tmp_path):
    folder = write_config(tmp_path / "run" / "checkpoints" / "last" / "pretrained_model",
                          images=("observation.images.top", "observation.images.wrist"),
                          action_dim=9, state_dim=9)
    info = read_checkpoint_info(tmp_path / "run" / "checkpoints" / "last")  # -> pretrained_model
    assert info.folder == folder and info.policy_type == "act"
    assert list(info.image_features) == ["observation.images.top", "observation.images.wrist"]
    assert info.image_features["observation.images.top"] == IMAGE_SHAPE
    assert (info.state_key, info.state_dim) == ("observation.state", 9)
    assert (info.action_key, info.action_dim) == ("action", 9)
    assert (info.chunk_size, info.n_action_steps) == (10, 5)
    assert not info.has_processors and info.vlm_model_name is None
    (folder / "policy_preprocessor.json").write_text("{}")
    (folder / "policy_postprocessor.json").write_text("{}")
    assert read_checkpoint_info(folder).has_processors


def test_checkpoint_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        read_checkpoint_info("lerobot/act_aloha_sim_transfer_cube_human")  # a hub id
    with pytest.raises(ValueError, match="checkpoint:="):
        read_checkpoint_info("")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        read_checkpoint_info(tmp_path)
    folder = write_config(tmp_path / "pickled", weights=False)
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="pickle"):
        read_checkpoint_info(folder)
    (tmp_path / "bad" / "model.safetensors").parent.mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"")
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"input_features": {}}))
    with pytest.raises(ValueError, match="type"):
        read_checkpoint_info(tmp_path / "bad")
    folder = write_config(tmp_path / "two_actions")
    config = json.loads((folder / "config.json").read_text())
    config["output_features"]["action"]["shape"] = [2, 4]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="1-D ACTION"):
        read_checkpoint_info(folder)


@pytest.mark.parametrize("kwargs, config, match", [
    ({}, {"action_dim": 6}, "6 dimensions"),
    ({"action_layout": "joints"}, {}, "9-D but"),
    ({}, {"state_dim": 7}, "state has 7 dimensions"),
    ({}, {"images": ("observation.images.a", "observation.images.b")}, "several cameras"),
    ({"image_key": "observation.images.a"},
     {"images": ("observation.images.a", "observation.images.b")}, "allow_missing_cameras"),
    ({"image_key": "observation.image"}, {}, "not an image input"),
    ({"state_key": "observation.joints"}, {}, "not the policy's state input"),
    ({}, {"extra_inputs": {"observation.environment_state": {"type": "ENV", "shape": [4]}}},
     "privileged"),
    ({}, {"policy_type": "smolvla", "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"},
     "vlm_path"),
    ({"vlm_path": "/nonexistent/smolvlm"}, {"policy_type": "smolvla", "vlm_model_name": "x/y"},
     "not a local model folder"),
    ({"gripper_scale": 0.0}, {}, "gripper_scale"),
    ({"control_hz": -1.0}, {}, "control_hz"),
    ({"horizon": 0}, {}, "horizon"),
])
def test_constructor_rejects_bad_settings_before_importing_lerobot(tmp_path, monkeypatch,
                                                                  kwargs, config, match):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "lerobot", None)  # these checks must not need lerobot
    folder = write_config(tmp_path / "ckpt", **config)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        LeRobotPolicy(folder, device="cpu", **kwargs)


def test_torchvision_build_mismatch_is_explained(tmp_path, monkeypatch):
    """PyPI's torchvision next to a +cpu torch fails to load its operators: say what to do."""
    from vla_bringup.policy.adapters import lerobot_policy

    class Config:
        type = "act"
        device = None
        pretrained_backbone_weights = None

    class PreTrainedConfig:
        @staticmethod
        def from_pretrained(path, **kwargs):
            return Config()

    class Factory:  # lerobot < 0.4 surface: no make_pre_post_processors
        @staticmethod
        def get_policy_class(name):
            raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(lerobot_policy, "import_lerobot", lambda: (PreTrainedConfig, Factory))
    with pytest.raises(RuntimeError, match="torchvision does not match") as error:
        LeRobotPolicy(write_config(tmp_path / "ckpt"), device="cpu")
    assert "download.pytorch.org/whl/cpu" in str(error.value)
    Factory.get_policy_class = staticmethod(lambda name: (_ for _ in ()).throw(
        RuntimeError("something else")))
    with pytest.raises(RuntimeError, match="^something else$"):  # other errors pass unchanged
        LeRobotPolicy(tmp_path / "ckpt", device="cpu")


def test_layout_constants_match_the_panda():
    assert LAYOUTS == {"arm_gripper": 8, "joints": 9} and len(PANDA_JOINT_NAMES) == 9


# ============================================================ with lerobot: a tiny ACT
def _has_pipelines() -> bool:
    from lerobot.policies import factory
    return hasattr(factory, "make_pre_post_processors")


def build_tiny_act(folder, *, dim=8, action_std=0.5, with_stats=True, seed=0):
    """Save a randomly initialised tiny ACT (image 3x48x64, state and action `dim`-D)."""
    pytest.importorskip("lerobot")
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies import factory
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    torch.manual_seed(seed)
    config = ACTConfig(
        input_features={"observation.images.front": PolicyFeature(FeatureType.VISUAL, IMAGE_SHAPE),
                        "observation.state": PolicyFeature(FeatureType.STATE, (dim,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (dim,))},
        chunk_size=10, n_action_steps=6, dim_model=32, n_heads=2, dim_feedforward=64,
        n_encoder_layers=1, n_decoder_layers=1, use_vae=False, latent_dim=8,
        n_vae_encoder_layers=1, vision_backbone="resnet18", pretrained_backbone_weights=None,
        device="cpu")
    action_mean = torch.linspace(-0.5, 0.5, dim)
    action_mean[7:] = 0.025  # a gripper opening inside the finger travel
    stats = {
        "observation.images.front": {"mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
                                     "std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)},
        "observation.state": {"mean": torch.zeros(dim), "std": torch.ones(dim)},
        "action": {"mean": action_mean, "std": torch.full((dim,), float(action_std))},
    }
    if _has_pipelines():  # lerobot >= 0.4: statistics live in the processor files
        policy = ACTPolicy(config)
        pre, post = factory.make_pre_post_processors(
            config, dataset_stats=stats if with_stats else None)
        pre.save_pretrained(folder)
        post.save_pretrained(folder)
    else:  # lerobot < 0.4: statistics are buffers saved with the weights
        policy = ACTPolicy(config, dataset_stats=stats if with_stats else None)
    policy.save_pretrained(folder)
    return action_mean.numpy().astype(np.float64)


@pytest.fixture(scope="module")
def act8(tmp_path_factory):
    pytest.importorskip("lerobot")
    folder = tmp_path_factory.mktemp("act8")
    build_tiny_act(folder, dim=8)
    return folder


def direct_chunk(folder, img, joints, dim):
    """The same inference by hand with lerobot's own loaders (independent of the adapter)."""
    from lerobot.policies import factory
    from lerobot.policies.act.modeling_act import ACTPolicy
    policy = ACTPolicy.from_pretrained(str(folder)).eval()
    state = (np.concatenate([joints[:7], [joints[7:].mean()]]) if dim == 8 else joints)
    batch = {"observation.images.front":
             torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0,
             "observation.state": torch.tensor(state, dtype=torch.float32)[None],
             "task": [SKILL.instruction]}
    with torch.no_grad():
        if _has_pipelines():
            pre, post = factory.make_pre_post_processors(policy.config, pretrained_path=str(folder))
            return post(policy.predict_action_chunk(pre(batch)))[0].double().numpy()
        return policy.predict_action_chunk(batch)[0].double().numpy()


def test_tiny_act_chunk_matches_lerobot(act8):
    backend = LeRobotPolicy(act8, device="cpu", control_hz=50.0)
    assert isinstance(backend, PolicyBackend)
    assert (backend.action_layout, backend.state_layout) == ("arm_gripper", "arm_gripper")
    assert (backend.image_key, backend.state_key) == ("observation.images.front",
                                                      "observation.state")
    backend.reset(SKILL)
    chunk = backend.infer(observation())
    assert isinstance(chunk, ActionChunk)
    assert list(chunk.joint_names) == list(PANDA_JOINT_NAMES)
    assert chunk.positions.shape == (6, 9)  # n_action_steps rows
    assert np.all(np.isfinite(chunk.positions))
    assert chunk.dt == pytest.approx(0.02) and not chunk.skill_done
    np.testing.assert_array_equal(chunk.positions[:, 7], chunk.positions[:, 8])
    assert np.all((chunk.positions[:, 7:] >= 0.0) & (chunk.positions[:, 7:] <= 0.04))
    expected = direct_chunk(act8, image(0), HOME, 8)[:6]
    np.testing.assert_allclose(chunk.positions[:, :7], expected[:, :7], atol=1e-5)
    np.testing.assert_allclose(chunk.positions[:, 7], np.clip(expected[:, 7], 0, 0.04), atol=1e-5)
    # deterministic in eval mode; the image and the state reach the model
    np.testing.assert_array_equal(backend.infer(observation()).positions, chunk.positions)
    assert not np.allclose(backend.infer(observation(image(5))).positions, chunk.positions)
    moved = HOME.copy()
    moved[0] += 0.5
    assert not np.allclose(backend.infer(observation(joints=moved)).positions, chunk.positions)


def test_tiny_act_options_and_input_errors(act8):
    backend = LeRobotPolicy(act8, device="cpu", horizon=3)
    assert backend.infer(observation()).horizon == 3
    assert LeRobotPolicy(act8, device="cpu", horizon=50).horizon == 10  # capped at chunk_size
    # a camera frame of another size is resized to the policy's 48x64
    assert backend.infer(observation(image(3, (96, 128)))).positions.shape == (3, 9)
    bad = HOME.copy()
    bad[8] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        backend.infer(observation(joints=bad))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        backend.infer(observation(image(0).astype(np.float32)))
    with pytest.raises(ValueError, match="camera image"):
        backend.infer(Observation(0.0, list(PANDA_JOINT_NAMES), HOME, SKILL, None))
    with pytest.raises(ValueError, match="9-D but"):
        LeRobotPolicy(act8, device="cpu", action_layout="joints")


def test_tiny_act_joint_mapping_with_zero_action_std(tmp_path):
    """With std 0 the de-normalised action is exactly the dataset mean: checks the mapping."""
    mean8 = build_tiny_act(tmp_path / "a8", dim=8, action_std=0.0)
    chunk = LeRobotPolicy(tmp_path / "a8", device="cpu").infer(observation())
    np.testing.assert_allclose(chunk.positions, np.tile([*mean8[:7], 0.025, 0.025], (6, 1)),
                               atol=1e-6)
    mean9 = build_tiny_act(tmp_path / "a9", dim=9, action_std=0.0)
    backend = LeRobotPolicy(tmp_path / "a9", device="cpu", gripper_scale=0.5)
    assert (backend.action_layout, backend.state_layout) == ("joints", "joints")
    chunk = backend.infer(observation())
    np.testing.assert_allclose(chunk.positions, np.tile([*mean9[:7], 0.04, 0.04], (6, 1)),
                               atol=1e-6)  # 0.025 / 0.5 = 0.05, clipped to the 0.04 travel


def test_tiny_act_never_downloads_the_backbone(tmp_path):
    """A real ACT config names ImageNet ResNet weights; they come from model.safetensors."""
    build_tiny_act(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["pretrained_backbone_weights"] = "ResNet18_Weights.IMAGENET1K_V1"
    config["device"] = "cuda"  # a checkpoint trained on GPU still loads on the CPU
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    backend = LeRobotPolicy(tmp_path / "ckpt", device="cpu")
    assert backend.config.pretrained_backbone_weights is None
    assert backend.infer(observation()).positions.shape == (6, 9)


def test_checkpoint_format_must_match_the_installed_lerobot(act8, tmp_path):
    pytest.importorskip("lerobot")
    folder = tmp_path / "ckpt"
    shutil.copytree(act8, folder)
    if _has_pipelines():  # lerobot >= 0.4 refuses a folder without processor files
        (folder / "policy_preprocessor.json").unlink()
        match = "migrate"
    else:  # lerobot < 0.4 refuses a folder saved by lerobot >= 0.4
        (folder / "policy_preprocessor.json").write_text('{"steps": []}')
        (folder / "policy_postprocessor.json").write_text('{"steps": []}')
        match = "lerobot >= 0.4"
    with pytest.raises(ValueError, match=match):
        LeRobotPolicy(folder, device="cpu")


def test_legacy_checkpoint_without_statistics_is_refused(tmp_path):
    pytest.importorskip("lerobot")
    if _has_pipelines():
        pytest.skip("lerobot >= 0.4 keeps statistics in processor files")
    build_tiny_act(tmp_path / "ckpt", with_stats=False)
    with pytest.raises(ValueError, match="normalisation statistics"):
        LeRobotPolicy(tmp_path / "ckpt", device="cpu")


def test_config_overrides(act8):
    backend = LeRobotPolicy(act8, device="cpu", config_overrides={"n_action_steps": 4})
    assert backend.horizon == 4 and backend.infer(observation()).horizon == 4
    with pytest.raises(ValueError, match="no 'not_a_field'"):
        LeRobotPolicy(act8, device="cpu", config_overrides={"not_a_field": 1})
