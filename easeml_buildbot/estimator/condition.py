"""The ease.ml/ci condition language, parsed by a small recursive-descent parser.

Grammar (whitespace is free between tokens)::

    condition := clause ( "/\\" clause )*
    clause    := expr ( "<" | ">" ) signed_number ( "+/-" | "±" ) number
    expr      := [ "+" | "-" ] term ( ( "+" | "-" ) term )*
    term      := number "*" var | var
    var       := "n" | "o" | "d"
    number    := digits [ "." digits ] [ exponent ] | "." digits [ exponent ]

``n`` is the new model's accuracy, ``o`` the old model's, ``d`` the fraction of test
samples on which the two models' predictions differ. Nothing here calls ``eval``: a
condition comes from a repository that may be hostile.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping

VARIABLES: dict[str, str] = {
    "n": "accuracy of the new model",
    "o": "accuracy of the old model",
    "d": "fraction of test samples where the two models' predictions differ",
}

_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConditionSyntaxError(ValueError):
    """A condition that does not parse; ``column`` is 1-based and points at the culprit."""

    def __init__(self, message: str, text: str, column: int) -> None:
        self.message = message
        self.text = text
        self.column = column
        super().__init__(self.render())

    def render(self) -> str:
        """The message, the condition, and a caret under the offending column."""
        return (
            f"column {self.column}: {self.message}\n"
            f"  {self.text}\n"
            f"  {' ' * (self.column - 1)}^"
        )


def _fmt(x: float) -> str:
    """Shortest text that parses back to the same float (``2`` rather than ``2.0``)."""
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


@dataclass(frozen=True)
class Term:
    """``coef * var``."""

    coef: float
    var: str


@dataclass(frozen=True)
class Clause:
    """``sum(coef * var) op const +/- eps``: decided within tolerance ``eps``."""

    terms: tuple[Term, ...]
    op: str
    const: float
    eps: float

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(t.var for t in self.terms)

    def expression(self) -> str:
        out = []
        for i, t in enumerate(self.terms):
            mag = abs(t.coef)
            body = t.var if mag == 1 else f"{_fmt(mag)} * {t.var}"
            if i == 0:
                out.append(body if t.coef >= 0 else f"-{body}")
            else:
                out.append(("+ " if t.coef >= 0 else "- ") + body)
        return " ".join(out)

    def value(self, values: Mapping[str, float]) -> float:
        """The clause's left-hand side for given variable values."""
        return sum(t.coef * values[t.var] for t in self.terms)

    def holds(self, values: Mapping[str, float]) -> bool:
        """Whether the clause is true for the (true) variable values."""
        v = self.value(values)
        return v > self.const if self.op == ">" else v < self.const

    def __str__(self) -> str:
        return f"{self.expression()} {self.op} {_fmt(self.const)} +/- {_fmt(self.eps)}"


@dataclass(frozen=True)
class Condition:
    """Clauses joined by AND (``/\\``); ``text`` is what the user wrote."""

    clauses: tuple[Clause, ...]
    text: str = field(default="", compare=False)  # as written; equality is by meaning

    @property
    def variables(self) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for c in self.clauses:
            out |= c.variables
        return out

    def holds(self, values: Mapping[str, float]) -> bool:
        return all(c.holds(values) for c in self.clauses)

    def __str__(self) -> str:
        return " /\\ ".join(str(c) for c in self.clauses)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- helpers -----------------------------------------------------------------
    def error(self, message: str, pos: int | None = None) -> ConditionSyntaxError:
        p = self.pos if pos is None else pos
        return ConditionSyntaxError(message, self.text, p + 1)

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, s: str) -> bool:
        self.skip_ws()
        return self.text.startswith(s, self.pos)

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.text)

    def describe_here(self) -> str:
        self.skip_ws()
        if self.pos >= len(self.text):
            return "end of condition"
        m = _IDENT.match(self.text, self.pos) or _NUMBER.match(self.text, self.pos)
        tok = m.group(0) if m else self.text[self.pos]
        return f"'{tok}'"

    def number(self, what: str) -> float:
        self.skip_ws()
        m = _NUMBER.match(self.text, self.pos)
        if not m:
            raise self.error(f"expected {what}, found {self.describe_here()}")
        end = m.end()
        if end < len(self.text) and (self.text[end].isalnum() or self.text[end] in "._"):
            raise self.error(f"malformed number '{self.text[self.pos:end + 1]}'")
        value = float(m.group(0))
        if not math.isfinite(value):  # 'inf' would neither mean anything nor parse back
            raise self.error(f"number '{m.group(0)}' is out of range")
        self.pos = end
        return value

    # -- grammar -----------------------------------------------------------------
    def condition(self) -> Condition:
        if self.at_end():
            raise self.error("empty condition: expected a clause such as 'n > 0.8 +/- 0.05'")
        clauses = [self.clause()]
        while not self.at_end():
            if self.peek("/\\"):
                self.pos += 2
                if self.at_end():
                    raise self.error("expected a clause after '/\\'")
                clauses.append(self.clause())
            elif self.peek("&") or self.peek("and") or self.peek("AND"):
                raise self.error("clauses are joined with '/\\' (AND)")
            else:
                raise self.error(f"expected '/\\' or end of condition, found {self.describe_here()}")
        return Condition(tuple(clauses), self.text)

    def clause(self) -> Clause:
        terms = self.expr()
        self.skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] not in "<>":
            if self.text.startswith("=", self.pos) or self.text.startswith("!", self.pos):
                raise self.error("only '<' and '>' are comparisons (no '=', '<=', '>=')")
            raise self.error(f"expected '<' or '>', found {self.describe_here()}")
        op = self.text[self.pos]
        self.pos += 1
        if self.pos < len(self.text) and self.text[self.pos] == "=":
            raise self.error(f"'{op}=' is not supported: use '{op}' (the tolerance already covers ties)")
        if self.pos < len(self.text) and self.text[self.pos] in "<>":
            raise self.error(f"unexpected '{self.text[self.pos]}' after '{op}'")
        sign = 1.0
        self.skip_ws()
        if self.pos < len(self.text) and self.text[self.pos] in "+-" and not self.peek("+/-"):
            sign = -1.0 if self.text[self.pos] == "-" else 1.0
            self.pos += 1
        const = sign * self.number("a constant after the comparison")
        if self.peek("+/-"):
            self.pos += 3
        elif self.peek("±"):
            self.pos += 1
        else:
            raise self.error(f"expected '+/-' and a tolerance, found {self.describe_here()}")
        self.skip_ws()
        eps_pos = self.pos
        if self.pos < len(self.text) and self.text[self.pos] in "+-":
            raise self.error("the tolerance after '+/-' must be a positive number")
        eps = self.number("a tolerance after '+/-'")
        if eps <= 0:
            raise self.error("the tolerance after '+/-' must be greater than 0", eps_pos)
        if eps >= 1:
            raise self.error("the tolerance after '+/-' must be less than 1", eps_pos)
        return Clause(tuple(terms), op, const, eps)

    def expr(self) -> list[Term]:
        terms: list[Term] = []
        seen: set[str] = set()
        first = True
        while True:
            self.skip_ws()
            sign = 1.0
            if self.pos < len(self.text) and self.text[self.pos] in "+-" and not self.peek("+/-"):
                sign = -1.0 if self.text[self.pos] == "-" else 1.0
                self.pos += 1
            elif not first:
                break
            self.skip_ws()
            term_pos = self.pos
            term = self.term(sign)
            if term.var in seen:
                raise self.error(f"variable '{term.var}' appears twice in one clause", term_pos)
            seen.add(term.var)
            terms.append(term)
            first = False
        return terms

    def term(self, sign: float) -> Term:
        self.skip_ws()
        coef = 1.0
        if self.pos < len(self.text) and (self.text[self.pos].isdigit() or self.text[self.pos] == "."):
            coef = self.number("a coefficient")
            self.skip_ws()
            if not self.peek("*"):
                raise self.error(f"expected '*' after the coefficient, found {self.describe_here()}")
            self.pos += 1
            self.skip_ws()
            if coef == 0:
                raise self.error("a coefficient must not be 0")
        m = _IDENT.match(self.text, self.pos)
        if not m:
            raise self.error(f"expected a variable (n, o or d), found {self.describe_here()}")
        name = m.group(0)
        if name not in VARIABLES:
            raise self.error(f"unknown variable '{name}': use n (new accuracy), o (old accuracy) or d (difference)")
        self.pos = m.end()
        return Term(sign * coef, name)


def parse_condition(text: str) -> Condition:
    """Parse ``text`` into a :class:`Condition`; raise :class:`ConditionSyntaxError`."""
    if not isinstance(text, str):
        raise ConditionSyntaxError(f"a condition must be a string, not {type(text).__name__}", str(text), 1)
    if "\n" in text.strip():
        raise ConditionSyntaxError("a condition must be on one line", text.replace("\n", " "), text.index("\n") + 1)
    return _Parser(text.strip()).condition()
