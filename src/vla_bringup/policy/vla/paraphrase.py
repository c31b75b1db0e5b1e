"""Reworded copies of a training instruction, so the policy learns to rely on the colour, the
direction and the destination rather than on the exact nouns and verbs of the demonstrations.

Only words of one meaning are swapped: object nouns, tray nouns, the leading verb of a skill,
and in/into, on/onto. The leading verb may also be left out ("the red cube on the blue cube"):
the thirtieth session found the committed policy reading such a verbless text, and one unseen
verb-noun pair ("rest the C brick atop the D brick"), as a finished pick. Colours, left/right
and the word order are kept. The word lists hold no word of the evaluation's held-out
paraphrases (a unit test checks), so those stay unseen.
"""
from __future__ import annotations

import zlib

import numpy as np

# Each group: words or phrases that mean the same in these instructions.
OBJECT_NOUNS = ("cube", "block", "piece", "object", "item", "square")
TRAY_NOUNS = ("tray", "bin", "container")
LEADING_VERBS = (
    ("pick up", "grasp", "lift", "take", "grab", "collect", "fetch", "pluck", "snatch", "hoist"),
    ("place", "put", "drop", "release", "leave", "position", "settle", "park", "sit", "stand"),
    ("push", "slide", "nudge", "shove", "shift", "bump", "budge"),
)
NO_VERB_SHARE = 0.25  # rewordings that leave the leading verb out
PREPOSITIONS = (("in", "into"), ("on", "onto"))
WORD_GROUPS = (OBJECT_NOUNS, TRAY_NOUNS) + PREPOSITIONS
MAX_VARIANTS = 32


def vocabulary() -> set[str]:
    """Every word these groups may put into an instruction."""
    words = {w for group in WORD_GROUPS for w in group}
    return words | {w for group in LEADING_VERBS for phrase in group for w in phrase.split()}


def paraphrases(text: str, count: int) -> list[str]:
    """Up to `count` distinct rewordings of `text` (never `text` itself), the same every call."""
    if not 0 <= count <= MAX_VARIANTS:
        raise ValueError(f"count must be in [0, {MAX_VARIANTS}], got {count}")
    words = text.split()
    lead_group, lead_length = None, 0
    for group in LEADING_VERBS:
        for phrase in group:
            length = len(phrase.split())
            if words[:length] == phrase.split() and length > lead_length:
                lead_group, lead_length = group, length
    slots = [(i, group) for i, word in enumerate(words) if i >= lead_length
             and words[i + 1:i + 2] != ["top"]  # "on top of" stays as it is
             for group in WORD_GROUPS if word in group]
    if lead_group is None and not slots:
        return []
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    found: list[str] = []
    for _ in range(count * 8):  # tries: short texts have few distinct rewordings
        new = list(words)
        for i, group in slots:
            new[i] = str(rng.choice(group))
        verbless = rng.random() < NO_VERB_SHARE
        lead = [str(rng.choice(lead_group))] if lead_group and not verbless else []
        candidate = " ".join(lead + new[lead_length:]) if lead_group else " ".join(new)
        if candidate != text and candidate not in found:
            found.append(candidate)
        if len(found) == count:
            break
    return found
