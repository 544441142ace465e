"""The condition grammar: what parses, what it means, and where errors point."""

from __future__ import annotations

import pytest

from easeml_buildbot.estimator.condition import (
    Clause,
    Condition,
    ConditionSyntaxError,
    Term,
    parse_condition,
)


def test_contract_example() -> None:
    cond = parse_condition("n - o > 0.02 +/- 0.01")
    assert cond.clauses == (Clause(terms=(Term(1.0, "n"), Term(-1.0, "o")), op=">", const=0.02, eps=0.01),)
    assert cond.variables == frozenset({"n", "o"})
    assert cond.text == "n - o > 0.02 +/- 0.01"
    assert str(cond) == "n - o > 0.02 +/- 0.01"


@pytest.mark.parametrize(
    "text, clauses",
    [
        ("n > 0.8 +/- 0.05", [((("n", 1.0),), ">", 0.8, 0.05)]),
        ("n>.8+/-.05", [((("n", 1.0),), ">", 0.8, 0.05)]),
        ("o < 1e-1 +/- 1E-2", [((("o", 1.0),), "<", 0.1, 0.01)]),
        ("n > 8e-1 +/- 5.e-2", [((("n", 1.0),), ">", 0.8, 0.05)]),
        ("d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01",
         [((("d", 1.0),), "<", 0.1, 0.01), ((("n", 1.0), ("o", -1.0)), ">", 0.02, 0.01)]),
        ("-n + o < -0.02 ± 0.01", [((("n", -1.0), ("o", 1.0)), "<", -0.02, 0.01)]),
        ("2 * n - 1.5*o > +0.1 +/- 0.1", [((("n", 2.0), ("o", -1.5)), ">", 0.1, 0.1)]),
        ("  n   -   o   >   0   +/-   0.1  ", [((("n", 1.0), ("o", -1.0)), ">", 0.0, 0.1)]),
        ("n > 0.7 +/- 0.05 /\\ o > 0.6 +/- 0.05 /\\ d < 0.3 +/- 0.1",
         [((("n", 1.0),), ">", 0.7, 0.05), ((("o", 1.0),), ">", 0.6, 0.05), ((("d", 1.0),), "<", 0.3, 0.1)]),
        ("n - o - d > -0.5 +/- 0.2", [((("n", 1.0), ("o", -1.0), ("d", -1.0)), ">", -0.5, 0.2)]),
    ],
)
def test_valid(text: str, clauses: list) -> None:
    cond = parse_condition(text)
    got = [(tuple((t.var, t.coef) for t in c.terms), c.op, c.const, c.eps) for c in cond.clauses]
    assert got == clauses
    # str() is canonical and parses back to the same structure
    again = parse_condition(str(cond))
    assert again.clauses == cond.clauses
    assert str(again) == str(cond)


# (condition, column of the caret (1-based), part of the message)
INVALID = [
    ("n - o >> 0.1", 8, "unexpected '>' after '>'"),
    ("n > 0.1", 8, "expected '+/-'"),
    ("n >= 0.1 +/- 0.1", 4, "'>=' is not supported"),
    ("n <= 0.1 +/- 0.1", 4, "'<=' is not supported"),
    ("n = 0.1 +/- 0.1", 3, "only '<' and '>'"),
    ("n 0.1 +/- 0.1", 3, "expected '<' or '>'"),
    ("x > 0.1 +/- 0.1", 1, "unknown variable 'x'"),
    ("n - acc > 0.1 +/- 0.1", 5, "unknown variable 'acc'"),
    ("n > 0.1 +/- 0", 13, "greater than 0"),
    ("n > 0.1 +/- 1.5", 13, "less than 1"),
    ("n > 0.1 +/- -0.1", 13, "must be a positive number"),
    ("n > 0.1 +/- 0.1 /\\", 19, "expected a clause after"),
    ("", 1, "empty condition"),
    ("   ", 1, "empty condition"),
    ("n > 0.1 +/- 0.1 and o > 0.1 +/- 0.1", 17, "joined with '/\\'"),
    ("n > 0.1 +/- 0.1 && o > 0.1 +/- 0.1", 17, "joined with '/\\'"),
    ("2 n > 0.1 +/- 0.1", 3, "expected '*' after the coefficient"),
    ("n - n > 0 +/- 0.1", 5, "variable 'n' appears twice"),
    ("n > 0.1.2 +/- 0.1", 5, "malformed number"),
    ("n > abc +/- 0.1", 5, "expected a constant"),
    ("n > 0.1 +/- eps", 13, "expected a tolerance"),
    ("n > 0.1 +/- 0.1 o > 0.2 +/- 0.1", 17, "expected '/\\' or end"),
    ("> 0.1 +/- 0.1", 1, "expected a variable"),
    ("n - > 0.1 +/- 0.1", 5, "expected a variable"),
    ("n * o > 0.1 +/- 0.1", 3, "expected '<' or '>'"),
    ("0 * n > 0.1 +/- 0.1", 5, "must not be 0"),
    ("n > 0.1 +- 0.1", 9, "expected '+/-'"),
    ("(n - o) > 0.1 +/- 0.1", 1, "expected a variable"),
    ("n > 0.1 +/- 0.1 /\\ /\\ o > 0.1 +/- 0.1", 20, "expected a variable"),
    ("n > 1e400 +/- 0.1", 5, "out of range"),  # would print as 'inf', which does not parse back
    ("1e999 * n > 0.1 +/- 0.1", 1, "out of range"),
]


@pytest.mark.parametrize("text, column, message", INVALID)
def test_invalid(text: str, column: int, message: str) -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse_condition(text)
    err = info.value
    assert message in err.message
    assert err.column == column, (err.column, str(err))
    # the rendered error shows the condition and a caret under the culprit
    lines = str(err).splitlines()
    assert lines[0].startswith(f"column {column}: ")
    assert lines[1] == "  " + text.strip()
    assert lines[2] == "  " + " " * (column - 1) + "^"


def test_at_least_twenty_invalid_cases() -> None:
    assert len(INVALID) >= 20


def test_caret_under_second_greater_than() -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse_condition("n - o >> 0.1")
    text_line, caret_line = str(info.value).splitlines()[1:]
    assert text_line[caret_line.index("^")] == ">"
    assert text_line[caret_line.index("^") - 1] == ">"


def test_not_a_string_and_multiline() -> None:
    with pytest.raises(ConditionSyntaxError):
        parse_condition(0.5)  # type: ignore[arg-type]
    with pytest.raises(ConditionSyntaxError, match="one line"):
        parse_condition("n > 0.1 +/- 0.1\n/\\ o > 0.1 +/- 0.1")


def test_no_eval() -> None:
    with pytest.raises(ConditionSyntaxError):
        parse_condition("__import__('os').system('true') > 0 +/- 0.1")


def test_truth_and_value() -> None:
    cond = parse_condition("d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01")
    assert cond.holds({"n": 0.9, "o": 0.85, "d": 0.05})
    assert not cond.holds({"n": 0.9, "o": 0.89, "d": 0.05})
    assert not cond.holds({"n": 0.9, "o": 0.85, "d": 0.2})
    assert cond.clauses[1].value({"n": 0.9, "o": 0.85}) == pytest.approx(0.05)
    assert isinstance(cond, Condition) and hash(cond) == hash(parse_condition(str(cond)))


def test_random_conditions_round_trip() -> None:
    """Seeded random conditions from the grammar: parse, print canonically, parse again."""
    import random

    rnd = random.Random(1903)

    def number() -> tuple[str, float]:
        digits = rnd.choice([1, 2, 3])
        x = rnd.randint(1, 10**digits - 1) / 10**digits
        text = rnd.choice([repr(x), f"{x:e}", repr(x).lstrip("0") if x < 1 else repr(x)])
        return text, float(text)

    for _ in range(300):
        want, parts = [], []
        for _ in range(rnd.randint(1, 3)):
            names = rnd.sample(["n", "o", "d"], rnd.randint(1, 3))
            terms, text = [], []
            for i, v in enumerate(names):
                sign = rnd.choice([1.0, -1.0])
                coef_text, coef = (number() if rnd.random() < 0.3 else ("", 1.0))
                body = f"{coef_text} * {v}" if coef_text else v
                text.append(("-" if sign < 0 else ("+" if i else "")) + " " * rnd.randint(0, 2) + body)
                terms.append((v, sign * coef))
            op = rnd.choice("<>")
            c_text, c = number()
            e_text, e = number()
            parts.append(f"{' '.join(text)} {op} {c_text} {rnd.choice(['+/-', '±'])} {e_text}")
            want.append((tuple(terms), op, c, e))
        text = " /\\ ".join(parts)
        cond = parse_condition(text)
        got = [(tuple((t.var, t.coef) for t in cl.terms), cl.op, cl.const, cl.eps) for cl in cond.clauses]
        assert got == want, text
        assert parse_condition(str(cond)) == cond
