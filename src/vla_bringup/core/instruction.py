"""Validate a spoken or typed task and plan it as a sequence of skills.

The grammar is deliberately small: one coloured object, one verb, one destination. Anything outside
it is refused with an `InstructionError` that says what was understood and what is missing, because
a robot guessing at an ambiguous instruction is worse than one that asks again.
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
OBJECT_NOUNS = frozenset({"cube", "cubes", "block", "blocks", "box", "boxes", "brick", "bricks"})
TRAY_WORDS = frozenset({"tray", "bin", "basket", "container"})
DIRECTIONS = {"left": "left", "leftward": "left", "leftwards": "left",
              "right": "right", "rightward": "right", "rightwards": "right"}
ON_WORDS = frozenset({"on", "onto", "atop", "top"})
# Words that start the destination part of a sentence ("... in the tray", "... onto the red one").
RELATIONS = frozenset({"in", "into", "inside", "to", "towards", "toward", "over"}) | ON_WORDS
NEGATIONS = frozenset({"not", "don", "dont", "never"})
_DESTINATION_START = RELATIONS | TRAY_WORDS | frozenset(DIRECTIONS)
# Words that may follow a colour besides an object noun ("the red one", "red and", "blue please").
_MAY_FOLLOW_COLOR = (frozenset({"one", "and", "it", "please", "now", "then", "thanks"})
                     | _DESTINATION_START)

# verb -> family it implies; None: decided by the destination (put it in the tray vs. on a cube).
VERBS: dict[str, str | None] = {
    **dict.fromkeys(("put", "place", "drop", "set", "bring", "transfer", "carry", "pick", "take",
                     "grab", "lift", "move", "shift", "get"), None),
    **dict.fromkeys(("push", "nudge", "slide", "shove", "poke"), "push"),
    **dict.fromkeys(("stack", "pile"), "stack"),
}
# Verbs that may also mean a sideways push ("move the red cube left").
MOVE_VERBS = frozenset({"move", "shift"})


class InstructionError(ValueError):
    """An instruction that cannot be executed; `reason_code` is stable, for counters and tests."""

    def __init__(self, reason_code: str, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message


@dataclasses.dataclass(frozen=True)
class PlannedSkill:
    skill: str  # "pick" | "place" | "push"
    instruction: str  # language the policy is conditioned on
    target_object: str  # e.g. "red_cube"
    destination: str = ""  # "tray" | "left" | "right" | "<color>_cube" | "" (pick)


@dataclasses.dataclass(frozen=True)
class TaskPlan:
    instruction: str  # the validated text
    family: str  # "pick_place" | "push" | "stack"
    target: str  # e.g. "red_cube"
    destination: str  # "tray" | "left" | "right" | "<color>_cube"
    skills: list[PlannedSkill]


def validate(text: object, max_length: int = 200) -> str:
    """Return `text` stripped with whitespace collapsed, or raise `InstructionError`."""
    if not isinstance(text, str):
        raise InstructionError("not_text", f"instruction must be text, got {type(text).__name__}")
    # Tabs, newlines and Unicode spaces are whitespace here (a typed line often ends with one);
    # every other control or invisible character could hide text from the operator: refused.
    for char in text:
        if char not in "\t\n\r" and unicodedata.category(char).startswith("C"):
            raise InstructionError(
                "control_characters",
                f"instruction contains a control or non-printable character ({char!r})")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise InstructionError("empty", "instruction is empty")
    if len(cleaned) > max_length:
        raise InstructionError(
            "too_long", f"instruction has {len(cleaned)} characters, at most {max_length} allowed")
    if not any(char.isalpha() for char in cleaned):
        raise InstructionError("no_letters", "instruction contains no words")
    return cleaned


def _describe(verb: str | None, colors: list[str], destination: str) -> str:
    parts = [f"action '{verb}'" if verb else "no action",
             f"object {' and '.join(colors)} cube" if colors else "no object",
             f"destination {destination.replace('_', ' ')}" if destination else "no destination"]
    return "understood: " + ", ".join(parts)


def _color_phrase(tokens: list[str], verb: str | None) -> list[str]:
    """Distinct colours in `tokens`, refusing a colour followed by an object we do not know."""
    colors: list[str] = []
    for index, token in enumerate(tokens):
        if token not in COLORS:
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if following and following not in OBJECT_NOUNS and following not in _MAY_FOLLOW_COLOR:
            raise InstructionError(
                "unknown_object",
                f"understood: action '{verb}'; '{token} {following}' is not an object I know "
                "(say cube, block, box or brick)")
        if token not in colors:
            colors.append(token)
    return colors


def plan(text: object) -> TaskPlan:
    """Turn an instruction into a `TaskPlan`, or raise `InstructionError` saying what is missing."""
    instruction = validate(text)
    tokens = re.findall(r"[a-z]+", instruction.lower())
    if NEGATIONS.intersection(tokens):
        raise InstructionError(
            "negation", "instruction is negated; say what to do, not what to avoid")

    verb_at = next((i for i, token in enumerate(tokens) if token in VERBS), None)
    verb = tokens[verb_at] if verb_at is not None else None
    # The destination part starts at the first relation or destination word after the verb.
    start = 0 if verb_at is None else verb_at + 1
    split = next((i for i in range(start, len(tokens)) if tokens[i] in _DESTINATION_START),
                 len(tokens))
    head, tail = tokens[:split], tokens[split:]

    trays = ["tray"] if TRAY_WORDS.intersection(tail) else []
    directions = sorted({DIRECTIONS[t] for t in tail if t in DIRECTIONS})
    dest_colors = _color_phrase(tail, verb)
    places = trays + directions + [f"{color}_cube" for color in dest_colors]
    destination = places[0] if len(places) == 1 else ""
    colors = _color_phrase(head, verb)
    understood = _describe(verb, colors, destination)

    if len(places) > 1:
        raise InstructionError(
            "ambiguous_destination",
            f"{understood}; the destination names several places ({' and '.join(places)}), "
            "say exactly one")
    if verb is None:
        raise InstructionError(
            "unknown_verb",
            f"{understood}; missing an action (pick up / put / place / push / stack)")
    if not colors:
        raise InstructionError(
            "missing_target",
            f"{understood}; missing which object: name its colour ({', '.join(COLORS[:4])})")
    if len(colors) > 1:
        raise InstructionError(
            "ambiguous_target", f"{understood}; only one object can be moved at a time")
    target = f"{colors[0]}_cube"

    family = VERBS[verb]
    if family is None:
        family = ("push" if directions and verb in MOVE_VERBS
                  else "stack" if dest_colors else "pick_place")
    allowed = {"push": "left or right", "stack": "onto another cube",
               "pick_place": "into the tray or onto another cube"}[family]
    if not destination:
        raise InstructionError("missing_destination", f"{understood}; missing where to ({allowed})")
    fits = {"push": bool(directions), "stack": bool(dest_colors), "pick_place": bool(trays)}[family]
    if not fits:
        raise InstructionError(
            "unsupported_destination", f"{understood}; '{verb}' can only go {allowed}")
    # "next to the blue cube" names a cube but no place we can put things: only on top of it.
    if dest_colors and not ON_WORDS.intersection(tail):
        raise InstructionError(
            "unsupported_destination",
            f"{understood}; a cube can only go on top of another "
            f"(say 'on the {dest_colors[0]} cube')")
    if family == "stack" and destination == target:
        raise InstructionError(
            "stack_on_itself", f"{understood}; a cube cannot be stacked on itself")
    return TaskPlan(instruction, family, target, destination, _skills(family, target, destination))


def pick_text(target: str) -> str:
    """The planner's own instruction for picking `target` (e.g. "red_cube")."""
    return f"pick up the {target.replace('_', ' ')}"


def _skills(family: str, target: str, destination: str) -> list[PlannedSkill]:
    noun = target.replace("_", " ")
    if family == "push":
        return [PlannedSkill("push", f"push the {noun} to the {destination}", target, destination)]
    where = "in the tray" if destination == "tray" else f"on the {destination.replace('_', ' ')}"
    return [PlannedSkill("pick", pick_text(target), target),
            PlannedSkill("place", f"place the {noun} {where}", target, destination)]
