"""Rewordings of training instructions: same meaning, none of the held-out paraphrases' words."""
from __future__ import annotations

import pytest

from vla_bringup.policy.vla.paraphrase import paraphrases, vocabulary
from vla_bringup.sim.demonstrations import SKILL_TEMPLATES, TASK_TEMPLATES

FIELDS = {"c": "red", "d": "blue", "dir": "left"}


def _words(templates: dict) -> set[str]:
    return {w for texts in templates.values() for t in texts for w in t.format(**FIELDS).split()}


def test_no_word_of_the_held_out_paraphrases_is_used():
    held_out_only = (_words(TASK_TEMPLATES["held_out"]) | _words(SKILL_TEMPLATES["held_out"])) \
        - _words(TASK_TEMPLATES["train"]) - _words(SKILL_TEMPLATES["train"])
    assert {"brick", "box", "basket", "sweep", "poke", "atop"} <= held_out_only
    assert not vocabulary() & held_out_only


def test_rewordings_keep_colour_direction_and_destination():
    for texts in SKILL_TEMPLATES["train"].values():
        for template in texts:
            text = template.format(**FIELDS)
            variants = paraphrases(text, 8)
            assert variants == paraphrases(text, 8)  # the same every call (cached embeddings)
            assert text not in variants and len(set(variants)) == len(variants)
            for variant in variants:
                assert len(variant.split()) <= len(text.split()) + 1
                assert [w for w in variant.split() if w in ("red", "blue", "left")] == \
                    [w for w in text.split() if w in ("red", "blue", "left")]
                assert ("tray" in text or "bin" in text) == any(
                    w in variant.split() for w in ("tray", "bin", "container"))


def test_some_rewordings_leave_the_leading_verb_out():
    """A text without its verb must still mean the skill (the thirtieth session saw the policy
    read "the C cube on the D cube" as a finished pick)."""
    new_verbs = {"settle", "park", "sit", "stand", "pluck", "snatch", "hoist", "bump", "budge"}
    for text in ("place the red cube on the blue cube", "pick up the red cube",
                 "push the red cube to the left"):
        variants = paraphrases(text, 32)
        verbless = [v for v in variants if v.split()[0] == "the"]
        assert verbless and len(verbless) < len(variants)
        assert all(v.split()[1:2] == ["red"] for v in verbless)
        assert any(v.split()[0] in new_verbs for v in variants), variants


def test_counts_and_texts_without_rewordable_words():
    assert paraphrases("pick up the red cube", 0) == []
    assert len(paraphrases("pick up the red cube", 5)) == 5
    assert paraphrases("stack it", 3) == []
    with pytest.raises(ValueError, match="count"):
        paraphrases("pick up the red cube", 100)
