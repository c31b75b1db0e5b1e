"""Every parameter in config/ is declared, described and in range; every node declares its own."""
from __future__ import annotations

import glob
import os

import pytest
import yaml

from vla_bringup.core.params import NODE_PARAMS, ParamSpec

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "config")
NODE_FILES = {"sim": "sim.yaml", "perception": "perception.yaml",
              "instruction": "instruction.yaml", "policy": "policy.yaml",
              "skill_controller": "skill_controller.yaml", "safety": "safety.yaml"}


@pytest.mark.parametrize("node, filename", NODE_FILES.items())
def test_yaml_values_are_declared_and_valid(node, filename):
    params = yaml.safe_load(open(os.path.join(CONFIG, filename)))[node]["ros__parameters"]
    specs = {spec.name: spec for spec in NODE_PARAMS[node]}
    assert set(params) == set(specs), f"{filename}: undeclared {set(params) - set(specs)}, " \
                                      f"missing {set(specs) - set(params)}"
    for name, value in params.items():
        specs[name].check(value)


def test_yaml_comments_give_units():
    for filename in NODE_FILES.values():
        for line in open(os.path.join(CONFIG, filename)):
            if ":" in line and "ros__parameters" not in line and line.startswith("    "):
                key = line.split(":")[0].strip()
                spec = next(s for n in NODE_PARAMS.values() for s in n if s.name == key)
                if spec.unit:
                    assert "#" in line, f"{filename}: {key} has no comment with its unit"


@pytest.mark.parametrize("spec", [s for specs in NODE_PARAMS.values() for s in specs],
                         ids=lambda s: s.name)
def test_every_spec_has_a_description_and_a_range(spec: ParamSpec):
    assert len(spec.description) > 10
    if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool):
        assert spec.min is not None and spec.max is not None
        assert spec.min <= spec.default <= spec.max
    spec.check(spec.default)


def test_check_refuses_out_of_range_and_wrong_types():
    spec = ParamSpec("rate", 10.0, "a rate in hertz", "Hz", 1.0, 100.0)
    spec.check(50)  # ints are fine where floats are expected
    for bad in (0.5, 101.0, "fast", True):
        with pytest.raises(ValueError):
            spec.check(bad)
    with pytest.raises(ValueError, match="not one of"):
        ParamSpec("device", "auto", "where to run", choices=("auto", "cpu")).check("tpu")


def test_no_stray_config_files():
    known = set(NODE_FILES.values()) | {"nodes.yaml"}
    for path in glob.glob(os.path.join(CONFIG, "*.yaml")):
        assert os.path.basename(path) in known, f"{path} is read by no node"


def test_docs_parameter_reference_is_current():
    from vla_bringup.core.params import markdown_reference
    path = os.path.join(CONFIG, "..", "docs", "parameters.md")
    assert open(path).read() == markdown_reference(), \
        "docs/parameters.md is stale: python -m vla_bringup.core.params > docs/parameters.md"
