"""`make train` runs the recipe the committed checkpoint records (its settings; the scores vary)."""
from __future__ import annotations

import dataclasses
import json
import os
import re

from vla_bringup.cli.train import TrainConfig, _read_overrides
from vla_bringup.policy.vla.backend import DEFAULT_CHECKPOINT
from vla_bringup.policy.vla.config import VLAConfig
from vla_bringup.sim.demonstrations import GeneratorConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "config", "vla_recipe.json")


def committed(name: str) -> dict:
    with open(os.path.join(DEFAULT_CHECKPOINT, name)) as stream:
        return json.load(stream)


def test_the_recipe_is_valid_for_the_trainer():
    model, train = _read_overrides(RECIPE)
    VLAConfig(**model)
    TrainConfig(**train)


def test_the_recipe_gives_the_committed_checkpoints_settings():
    model, train = _read_overrides(RECIPE)
    config, log = committed("config.json"), committed("train_log.json")
    assert {key: config[key] for key in model} == model
    trained_with = log["train_config"]
    # The recipe saves fp16, and the committed files were exported (unchanged) as fp16.
    assert train.pop("save_dtype") == "float16" == log["exported_from"]["dtype"]
    assert {key: trained_with[key] for key in train} == train


def test_make_train_generates_data_with_the_committed_checkpoints_settings():
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    target = makefile[makefile.index("\ntrain:"):]
    target = target[:target.index("\n\n")]
    generator = committed("train_log.json")["dataset"]["generator_config"]
    assert int(re.search(r"--episodes (\d+)", target).group(1)) == \
        committed("train_log.json")["dataset"]["episodes"]
    assert float(re.search(r"--perturb-std ([0-9.]+)", target).group(1)) == \
        generator["perturb_std"]
    assert "--config config/vla_recipe.json" in target
    # Every other generator setting was its default then, and still is.
    defaults = dataclasses.asdict(GeneratorConfig(perturb_std=generator["perturb_std"]))
    defaults["families"] = list(defaults["families"])
    assert {key: defaults[key] for key in generator} == generator
