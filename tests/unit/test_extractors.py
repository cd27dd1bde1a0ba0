import pytest

from kexpert.data.numbers import canonical_number
from kexpert.tasks.extractors import (
    extract_code,
    first_option_letter,
    gsm8k_number,
    match_option_text,
    numbers_equal,
    yes_no,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        (" B. wet palms", "B"),
        ("The answer is C.", "C"),
        ("the answer is (d)", "D"),
        ("Answer: A", "A"),
        ("(B) because it is wet", "B"),
        ("I think C) is right", "C"),
        ("A. dry palms\n\nBecause rubbing dry palms...", "A"),
        ("a plant needs water", None),  # lowercase article, not option A
        ("none of these", None),
        ("", None),
        ("Between B and C, the answer is C", "C"),
    ],
)
def test_first_option_letter(text, expected):
    assert first_option_letter(text, ("A", "B", "C", "D")) == expected


def test_first_option_letter_numeric_labels():
    assert first_option_letter("2. bubbles when acid is placed on it", ("1", "2", "3", "4")) == "2"
    assert first_option_letter("The answer is 3", ("1", "2", "3", "4")) == "3"


@pytest.mark.parametrize(
    ("text", "choices", "expected"),
    [
        (" dry palms", ["dry palms", "wet palms"], 0),
        ("I would say wet palms, clearly", ["dry palms", "wet palms"], 1),
        ("nothing relevant", ["dry palms", "wet palms"], None),
        ("Palms covered with oil!", ["palms", "palms covered with oil"], 1),
    ],
)
def test_match_option_text(text, choices, expected):
    assert match_option_text(text, choices) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes, it is.", "yes"),
        ("no", "no"),
        ("True", "yes"),
        ("false.", "no"),
        ("A", "yes"),
        ("B. No", "no"),
        ("maybe", None),
    ],
)
def test_yes_no(text, expected):
    assert yes_no(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sells 9 eggs.\n#### 18", "18"),
        ("#### 1,000", "1000"),
        ("The answer is $42.", "42"),
        ("The answer is: -3", "-3"),
        ("first 5 then 7 and finally 12.", "12"),
        ("It costs 2.50 dollars", "2.5"),
        ("#### 3/4", "0.75"),
        ("no numbers here", None),
        ("The answer is 18.0", "18"),
    ],
)
def test_gsm8k_number(text, expected):
    assert gsm8k_number(text) == expected


def test_numbers_equal():
    assert numbers_equal("18", "18.0")
    assert not numbers_equal("18", "19")
    assert not numbers_equal(None, "1")
    assert canonical_number("1,234.50") == "1234.5"
    assert canonical_number("abc") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[BEGIN]\ndef f(x):\n    return x\n[DONE]", "def f(x):\n    return x"),
        ("[BEGIN]\n 'def f(x):\n    return x' \n[DONE]", "def f(x):\n    return x"),
        ("Here:\n```python\ndef f(x):\n    return 1\n```\nDone", "def f(x):\n    return 1"),
        ("Sure!\ndef g(a):\n    return a*2\nThis doubles a.", "def g(a):\n    return a*2"),
        ("import math\ndef h(x):\n    return math.sqrt(x)", "import math\ndef h(x):\n    return math.sqrt(x)"),
    ],
)
def test_extract_code(text, expected):
    assert extract_code(text) == expected
