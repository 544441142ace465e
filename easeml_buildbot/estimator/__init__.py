"""The estimator core: condition language, sample sizes and decisions (no Buildbot import).

See docs/statistics.md for the bounds and docs/condition-language.md for the grammar.
"""

from easeml_buildbot.estimator.condition import Clause, Condition, ConditionSyntaxError, Term, parse_condition
from easeml_buildbot.estimator.decision import DecisionError, Verdict, decide
from easeml_buildbot.estimator.samples import SampleSize, sample_size

__all__ = [
    "Clause", "Condition", "ConditionSyntaxError", "Term", "parse_condition",
    "DecisionError", "Verdict", "decide", "SampleSize", "sample_size",
]
