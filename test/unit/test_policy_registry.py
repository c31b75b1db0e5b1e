"""policy:=<backend> names: every declared backend is constructible or fails with a clear reason."""
import pytest

from vla_bringup.core.params import POLICY_BACKENDS
from vla_bringup.policy.registry import make_backend


@pytest.mark.parametrize("name", ["openvla", "lerobot"])
def test_adapters_need_a_local_checkpoint(name):
    with pytest.raises(ValueError, match=f"policy {name} needs a local checkpoint folder"):
        make_backend(name, horizon=16, dt=0.1, checkpoint="")


def test_adapter_with_a_missing_folder_says_so(tmp_path):
    with pytest.raises(ValueError, match="does not exist|not a directory|no such"):
        make_backend("openvla", horizon=16, dt=0.1, checkpoint=str(tmp_path / "nowhere"))


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ValueError, match="available") as error:
        make_backend("gpt", horizon=16, dt=0.1)
    assert all(name in str(error.value) for name in POLICY_BACKENDS)


def test_scripted_expert_is_still_a_named_backend():
    backend = make_backend("scripted_expert", horizon=8, dt=0.05)
    assert backend.name == "scripted_expert" and backend.requires_ground_truth
