import pytest

from vla_bringup.core.instruction import InstructionError, PlannedSkill, plan, validate


@pytest.mark.parametrize("text, target", [
    ("put the red cube in the tray", "red_cube"),
    ("place the red block into the bin", "red_cube"),
    ("drop the green cube in the basket", "green_cube"),
    ("move the yellow block to the tray", "yellow_cube"),
    ("Please put the BLUE brick in the container.", "blue_cube"),
    ("pick up the red cube and put it in the tray", "red_cube"),
    ("put the orange box in the tray, please", "orange_cube"),
])
def test_pick_place_paraphrases(text, target):
    result = plan(text)
    noun = target.replace("_", " ")
    assert (result.family, result.target, result.destination) == ("pick_place", target, "tray")
    assert result.skills == [
        PlannedSkill("pick", f"pick up the {noun}", target),
        PlannedSkill("place", f"place the {noun} in the tray", target, "tray"),
    ]


@pytest.mark.parametrize("text, target, side", [
    ("push the blue cube to the left", "blue_cube", "left"),
    ("nudge the red block right", "red_cube", "right"),
    ("slide the green cube leftwards", "green_cube", "left"),
    ("move the yellow cube to the right!", "yellow_cube", "right"),
])
def test_push_paraphrases(text, target, side):
    result = plan(text)
    noun = target.replace("_", " ")
    assert (result.family, result.target, result.destination) == ("push", target, side)
    assert result.skills == [PlannedSkill("push", f"push the {noun} to the {side}", target, side)]


@pytest.mark.parametrize("text, target, base", [
    ("stack the red cube on the blue cube", "red_cube", "blue"),
    ("put the red cube on top of the green block", "red_cube", "green"),
    ("place the yellow block onto the red one", "yellow_cube", "red"),
    ("Stack red on blue, please", "red_cube", "blue"),
])
def test_stack_paraphrases(text, target, base):
    result = plan(text)
    noun = target.replace("_", " ")
    assert (result.family, result.target, result.destination) == ("stack", target, f"{base}_cube")
    assert result.skills == [
        PlannedSkill("pick", f"pick up the {noun}", target),
        PlannedSkill("place", f"place the {noun} on the {base} cube", target, f"{base}_cube"),
    ]


def test_plan_keeps_validated_text():
    assert plan("  put the red cube\tin the tray  ").instruction == "put the red cube in the tray"


@pytest.mark.parametrize("text, code, says", [
    ("put the red and blue cubes in the tray", "ambiguous_target", "red and blue"),
    ("put the cube in the tray", "missing_target", "which object"),
    ("throw the red cube in the tray", "unknown_verb", "missing an action"),
    ("the red cube in the tray", "unknown_verb", "object red cube"),
    ("stack the red cube on the red block", "stack_on_itself", "itself"),
    ("stack the red cube on itself", "missing_destination", "onto another cube"),
    ("put the red cube", "missing_destination", "object red cube"),
    ("push the blue cube", "missing_destination", "left or right"),
    ("put the red ball in the tray", "unknown_object", "red ball"),
    ("push the red cube into the tray", "unsupported_destination", "left or right"),
    ("put the red cube to the left", "unsupported_destination", "tray"),
    ("stack the red cube in the tray", "unsupported_destination", "onto another cube"),
    ("place the red cube next to the blue cube", "unsupported_destination", "on top"),
    ("put the red cube on the blue cube in the tray", "ambiguous_destination", "several"),
    ("don't push the red cube left", "negation", "negated"),
])
def test_plan_failures_say_what_is_missing(text, code, says):
    with pytest.raises(InstructionError) as error:
        plan(text)
    assert error.value.reason_code == code
    assert says in error.value.message


@pytest.mark.parametrize("text, code", [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("x" * 201, "too_long"),
    ("put the red cube\x00 in the tray", "control_characters"),
    ("put the red\u200b cube in the tray", "control_characters"),
    ("\x1b[31mred", "control_characters"),
    ("1234 !!", "no_letters"),
    (None, "not_text"),
])
def test_validate_rejects(text, code):
    with pytest.raises(InstructionError) as error:
        validate(text)
    assert error.value.reason_code == code
    assert str(error.value)


def test_validate_accepts_and_normalises():
    assert validate("  push\tthe red cube left\n") == "push the red cube left"
    assert validate("push\u00a0the red cube left") == "push the red cube left"
    assert validate("a" * 200) == "a" * 200
    assert validate("short", max_length=5) == "short"
    with pytest.raises(InstructionError):
        validate("longer", max_length=5)
