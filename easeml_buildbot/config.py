"""The repository configuration ``.easeml.yml``, validated into a frozen dataclass.

Read with PyYAML's safe loader only; every problem is reported at once, each naming the
file, the line (where YAML gives one) and the key, with a "did you mean" hint for unknown
keys. The original ease.ml/ci form (a top-level ``ml:`` list of single-key maps) is
accepted too. ``python -m easeml_buildbot.config --markdown`` prints the reference in
docs/config-reference.md from the schema below, so the two cannot drift apart.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

import yaml

from easeml_buildbot.estimator.condition import Condition, ConditionSyntaxError, parse_condition
from easeml_buildbot.estimator.decision import MODES
from easeml_buildbot.estimator.samples import (
    ADAPTIVITIES,
    METHOD_ALIASES,
    METHODS,
    SampleSize,
    SampleSizeError,
    normalize_adaptivity,
    sample_size,
    valid_methods,
)

CONFIG_FILE = ".easeml.yml"
#: a configuration is a few hundred bytes; anything near this is not one (bounded memory)
MAX_CONFIG_BYTES = 64 * 1024
#: the largest ``steps``: far beyond any test set's labels, far below a 32-bit counter
MAX_STEPS = 100_000
_EMAIL = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")


class ConfigError(ValueError):
    """Every problem of one configuration, one per line: ``FILE:LINE: key 'x': message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Key:
    """One key of the schema: its type, default and meaning (rendered into the docs)."""

    name: str
    type: str
    default: Any
    doc: str
    required: bool = False


SCHEMA: tuple[Key, ...] = (
    Key("condition", "string", None, "The test condition, e.g. `n - o > 0.02 +/- 0.01` "
        "(see docs/condition-language.md).", required=True),
    Key("reliability", "number, 0 < r < 1", 0.9999, "Probability that every verdict over the "
        "`steps` uses of one test set is correct (1 - δ)."),
    Key("mode", "`fp-free` \\| `fn-free`", "fp-free", "What an *unknown* verdict becomes: `fp-free` "
        "turns it into fail (no false passes), `fn-free` into pass (no false failures)."),
    Key("adaptivity", "`none` \\| `firstChange` \\| `k-pass` \\| `full`", "full", "How much the developers learn "
        "from each verdict: `full` (they see every pass/fail), `firstChange` (alias `hybrid`: "
        "the test set retires at the first pass, so all they saw before was fail), `k-pass` "
        "(e.g. `2-pass`: it retires after k passes; sized between the two), `none` "
        "(they see no verdicts)."),
    Key("steps", f"integer, 1 ≤ H ≤ {MAX_STEPS:,}", 32, "H, the number of uses (commits evaluated) "
        "one test set serves before it is retired and a new one is needed."),
    Key("email", "address or list of addresses", [], "Who receives the results."),
    Key("dataset", "path in the repository", "data/test.csv.gpg", "The encrypted test set "
        "(read from the default branch's accepted commit, never from a pull request)."),
    Key("model", "mapping", {}, "How to run the model (see docs/model-contract.md); kept as given."),
    Key("method", "`auto` \\| `hoeffding` \\| `bennett` \\| `exact` \\| `betting` \\| `sequential`", "auto",
        "The bound used for sample sizes and decisions; `auto` takes the one needing the fewest labels, "
        "`betting` plans a few more labels but decides far more often when the models rarely "
        "disagree, `sequential` stops reading labels as soon as the verdict is decided "
        "(see docs/statistics.md)."),
    Key("label_column", "string", "label", "Name of the label column in the test set."),
    Key("labels", "path in the repository", None, "Labels on demand (docs/labels-on-demand.md): the "
        "test set `dataset` holds features and a row id only, and this encrypted file holds "
        "`id_column,label_column` rows for the rows where the two models disagree. The service "
        "mails the owners the ids of the rows it still needs and decides once their labels are "
        "committed here (on the default branch); the pull request's use is counted once. Needs a "
        "condition of `d` and `n - o` clauses with a `d < p` clause; unset: every row is labelled."),
    Key("id_column", "string", "id", "With `labels`: the column naming each row (in the test set "
        "and in the labels file); ids must be unique."),
    Key("model.gpus", "integer ≥ 0 \\| `all`", 0, "GPUs the model needs: only workers that "
        "advertise at least that many (`EASEML_WORKER_GPUS`) take the build, and the container "
        "gets them (`all`: every GPU of a worker that has one). When no such worker is connected, "
        "the build fails saying so (see docs/operator-guide.md)."),
    Key("branches", "list of branch names or globs", [], "Base branches besides the default "
        "branch whose pull requests are evaluated (`*`, `?`, `[...]` as in shell globs; `*` "
        "matches `/` too). Only the default branch's list counts, and such pull requests are "
        "still tested with the default branch's configuration and test set; their check run "
        "is named `easeml/ci (into BRANCH)` so it never satisfies the default branch's "
        "protection. Pull requests into any other branch are not evaluated."),
)
KEYS = {k.name: k for k in SCHEMA if "." not in k.name}  # dotted rows live inside a mapping
LEGACY_KEYS = ("script", "condition", "reliability", "mode", "adaptivity", "steps", "data_mode", "email")
#: Spellings of the first ease.ml/ci release, read as the current legacy key.
LEGACY_ALIASES = {"dataMode": "data_mode"}


@dataclass(frozen=True)
class EasemlConfig:
    """A validated ``.easeml.yml``."""

    condition: Condition
    condition_text: str
    reliability: float = 0.9999
    mode: str = "fp-free"
    adaptivity: str = "full"
    steps: int = 32
    email: tuple[str, ...] = ()
    dataset: str = "data/test.csv.gpg"
    model: Mapping[str, Any] = field(default_factory=dict)
    method: str = "auto"
    label_column: str = "label"
    branches: tuple[str, ...] = ()
    labels: str | None = None  # labels on demand: the encrypted labels file
    id_column: str = "id"
    source: str = CONFIG_FILE
    script: str | None = None  # legacy ``ml: - script:``
    data_mode: str | None = None  # legacy ``ml: - data_mode:``
    legacy: bool = False

    def __hash__(self) -> int:
        return hash((self.condition, self.reliability, self.mode, self.adaptivity, self.steps,
                     self.email, self.dataset, self.method, self.label_column, self.labels,
                     self.id_column, self.source))

    def evaluates_branch(self, base_ref: str, default_branch: str) -> bool:
        """Whether pull requests into ``base_ref`` are evaluated (this being the default
        branch's configuration): the default branch itself, or one ``branches:`` lists."""
        return base_ref == default_branch or any(fnmatch.fnmatchcase(base_ref, pattern)
                                                 for pattern in self.branches)

    @property
    def labelling(self) -> str:
        """``active`` with labels on demand (only disagreeing rows are labelled), else ``full``."""
        return "active" if self.labels else "full"

    @property
    def split_column(self) -> str:
        """The column split off the test set before the model sees it: the labels, or with
        labels on demand the row ids."""
        return self.id_column if self.labels else self.label_column

    def required_samples(self) -> SampleSize:
        """The samples this configuration needs (labels, unlabelled, per clause)."""
        return sample_size(self.condition, self.reliability, self.adaptivity, self.steps, self.method,
                           labelling=self.labelling)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the condition as text)."""
        return {
            "condition": self.condition_text,
            "reliability": self.reliability,
            "mode": self.mode,
            "adaptivity": self.adaptivity,
            "steps": self.steps,
            "email": list(self.email),
            "dataset": self.dataset,
            "model": dict(self.model),
            "method": self.method,
            "label_column": self.label_column,
            "branches": list(self.branches),
            "labels": self.labels,
            "id_column": self.id_column,
            "source": self.source,
            "script": self.script,
            "data_mode": self.data_mode,
            "legacy": self.legacy,
        }

    def summary(self) -> str:
        """One paragraph saying what this configuration promises."""
        s = self.required_samples()
        extra = f" and {s.unlabeled} samples with predictions only" if s.unlabeled else ""
        if self.labels:
            extra = (f" (expected; labels on demand: only rows where the models disagree, asked of the "
                     f"owners and read from {self.labels}) of {s.rows} test rows with predictions")
        who = ", ".join(self.email) if self.email else "nobody (no email configured)"
        return (
            f"{self.source}: "
            + guarantee_text(self.condition, steps=self.steps, dataset=self.dataset,
                             reliability=self.reliability, adaptivity=self.adaptivity, mode=self.mode)
            + f" This needs {s.labels} labelled test samples{extra} (method {s.method}; "
            + ", ".join(f"{m}: {n}" for m, n in s.candidates.items())
            + f"). Results are sent to {who}."
        )


def guarantee_text(condition: Any, *, steps: int, dataset: str, reliability: float, adaptivity: str,
                   mode: str | None) -> str:
    """The guarantee in plain words (``easeml check-config``'s paragraph; the check run's too).

    Parameters
    ----------
    condition : the condition (or its text), e.g. ``n - o > 0.02 +/- 0.01``
    steps, dataset, reliability, adaptivity, mode : as in ``.easeml.yml``

    Returns
    -------
    str
        Three sentences: what is tested, how reliable every verdict is over the test set's
        uses under the adaptivity, and what an inconclusive result counts as.
    """
    reliability = float(reliability)
    delta = 1 - reliability
    unknown = "fail (no false passes)" if mode == "fp-free" else "pass (no false failures)"
    adapt = {
        "full": "even if the developers adapt to every verdict they see",
        "firstChange": "as the test set retires at the first pass",
        "none": "provided the developers see no verdicts",
    }.get(adaptivity, f"as the test set retires after {str(adaptivity).split('-')[0]} passes")
    return (
        f"each commit is tested against `{condition}`. Over {steps} uses of "
        f"the test set {dataset}, every verdict is correct with probability at least "
        f"{reliability} (δ = {delta:.3g}), {adapt}. Each clause is decided within its "
        f"tolerance; an inconclusive result counts as {unknown}."
    )


# -- loading ---------------------------------------------------------------------

class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, line: int | None, key: str | None, message: str) -> None:
        where = f"{self.source}:{line}" if line else self.source
        what = f" key '{key}':" if key else ""
        self.items.append(f"{where}:{what} {message}")


def _did_you_mean(name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not close:
        close = [k for k in known if k.lower() == name.lower().replace("-", "_")]
    return f" (did you mean '{close[0]}'?)" if close else ""


def _mapping_lines(node: yaml.Node) -> dict[str, int]:
    if isinstance(node, yaml.MappingNode):
        return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}
    return {}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_value(name: str, value: Any, add: Callable[[str], None]) -> Any:
    """Validate one key; return the normalised value (or None after reporting)."""
    if name == "condition":
        if not isinstance(value, str):
            add(f"must be a string such as 'n - o > 0.02 +/- 0.01', not {type(value).__name__}")
            return None
        try:
            return parse_condition(value)
        except ConditionSyntaxError as exc:
            add(exc.render().replace("\n", "\n    "))
            return None
    if name == "reliability":
        if not _is_number(value) or not 0 < value < 1:
            add(f"must be a number strictly between 0 and 1 (e.g. 0.9999), not {value!r}")
            return None
        return float(value)
    if name == "mode":
        if value not in MODES:
            add(f"must be 'fp-free' or 'fn-free', not {value!r}" + (_did_you_mean(str(value), MODES)))
            return None
        return value
    if name == "adaptivity":
        try:
            return normalize_adaptivity(value)
        except SampleSizeError:
            add(f"must be one of none, firstChange, full (or hybrid, or k-pass such as 2-pass), not {value!r}"
                + _did_you_mean(str(value), ADAPTIVITIES + ("hybrid",)))
            return None
    if name == "steps":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            add(f"must be an integer >= 1 (the number of commits one test set serves), not {value!r}")
            return None
        if value > MAX_STEPS:
            add(f"must be at most {MAX_STEPS} (the number of commits one test set serves; "
                f"retire the test set and commit a new one instead), not {value}")
            return None
        return value
    if name == "branches":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(b, str) and b.strip() for b in items):
            add("must be a branch name or a list of branch names or globs, e.g. [release/*]")
            return None
        return tuple(b.strip() for b in items)
    if name == "email":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(e, str) for e in items):
            add("must be an email address or a list of addresses")
            return None
        bad = [e for e in items if not _EMAIL.match(e.strip())]
        if bad:
            add("not an email address: " + ", ".join(repr(b) for b in bad))
            return None
        return tuple(e.strip() for e in items)
    if name in ("dataset", "labels"):
        if not isinstance(value, str) or not value.strip():
            add("must be a path inside the repository, e.g. data/test.csv.gpg")
            return None
        p = PurePosixPath(value)
        if p.is_absolute() or ".." in p.parts:
            add(f"must be a relative path inside the repository, not {value!r}")
            return None
        return str(p)
    if name == "model":
        if value is None:
            return {}
        if not isinstance(value, dict):
            add(f"must be a mapping (see docs/model-contract.md), not {type(value).__name__}")
            return None
        if "gpus" in value:
            from easeml_buildbot.gpus import ALL, parse_request
            try:
                n = parse_request(value["gpus"])
            except ValueError as exc:
                add(f"gpus: {exc}")
                return None
            value = {**value, "gpus": "all" if n == ALL else n}
        return value
    if name == "method":
        m = METHOD_ALIASES.get(value, value) if isinstance(value, str) else value
        if m not in METHODS:
            add(f"must be one of {', '.join(METHODS)}, not {value!r}" + _did_you_mean(str(value), METHODS))
            return None
        return m
    if name in ("label_column", "id_column", "script", "data_mode"):
        if not isinstance(value, str) or not value:
            add(f"must be a non-empty string, not {value!r}")
            return None
        return value
    raise AssertionError(name)


def _collect(root: yaml.Node, data: Any, problems: _Problems) -> dict[str, tuple[Any, int | None, bool]]:
    """Flatten the new and the legacy form into key -> (value, line, legacy)."""
    out: dict[str, tuple[Any, int | None, bool]] = {}
    if not isinstance(data, dict):
        problems.add(root.start_mark.line + 1 if root is not None else None, None,
                     "the configuration must be a YAML mapping of keys such as 'condition:'")
        raise ConfigError(problems.items)
    lines = _mapping_lines(root)
    seen: set[str] = set()
    for k, _ in root.value:
        if k.value in seen:
            problems.add(k.start_mark.line + 1, str(k.value), "appears more than once")
        seen.add(k.value)
    for key, value in data.items():
        line = lines.get(str(key))
        if key == "ml":
            seq = [v for k, v in root.value if k.value == "ml"][-1]  # the node YAML kept (the last)
            if not isinstance(value, list):
                problems.add(line, "ml", "the legacy form is a list of single-key maps ('- condition: ...')")
                continue
            for item, item_node in zip(value, seq.value):
                iline = item_node.start_mark.line + 1
                if not isinstance(item, dict) or len(item) != 1:
                    problems.add(iline, "ml", "each entry must be one 'key: value' (e.g. '- steps: 32')")
                    continue
                ((k2, v2),) = item.items()
                k2 = LEGACY_ALIASES.get(k2, k2)
                if k2 not in LEGACY_KEYS and k2 not in KEYS:
                    problems.add(iline, f"ml.{k2}", "unknown key" + _did_you_mean(str(k2), LEGACY_KEYS + tuple(KEYS)))
                    continue
                if k2 in out:
                    problems.add(iline, f"ml.{k2}", "given more than once" if out[k2][2]
                                 else "given both at the top level and in 'ml:'")
                    continue
                out[k2] = (v2, iline, True)
            continue
        if not isinstance(key, str) or key not in KEYS:
            problems.add(line, str(key), "unknown key" + _did_you_mean(str(key), tuple(KEYS) + ("ml",)))
            continue
        if key in out:
            problems.add(line, key, "given both at the top level and in 'ml:'")
            continue
        out[key] = (value, line, False)
    return out


class _Refused(yaml.composer.ComposerError):
    """A YAML construct the configuration does not allow."""


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases: a few hundred bytes of nested
    aliases expand to gigabytes (the "billion laughs"), and a configuration needs none."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(None, None, "YAML aliases (*name) are not allowed "
                                              "in .easeml.yml; write the value out", event.start_mark)
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise _Refused(None, None, "YAML anchors (&name) are not allowed "
                                              "in .easeml.yml; write the value out", event.start_mark)
        return super().compose_node(parent, index)


def parse_config(text: str, source: str = CONFIG_FILE) -> EasemlConfig:
    """Validate the text of a ``.easeml.yml``; raise :class:`ConfigError` listing every problem."""
    problems = _Problems(source)
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_CONFIG_BYTES:
        problems.add(None, None, f"{size} bytes; a configuration may have at most {MAX_CONFIG_BYTES}")
        raise ConfigError(problems.items)
    loader = _NoAliasLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = "" if isinstance(exc, _Refused) else "YAML syntax error: "
        problems.add(line, None, f"{what}{exc.problem or exc}")
        raise ConfigError(problems.items) from None
    except yaml.YAMLError as exc:
        problems.add(None, None, f"YAML error: {exc}")
        raise ConfigError(problems.items) from None
    finally:
        loader.dispose()
    if root is None:
        problems.add(None, None, "the configuration is empty: it needs at least 'condition:'")
        raise ConfigError(problems.items)

    raw = _collect(root, data, problems)
    values: dict[str, Any] = {}
    legacy = any(is_legacy for _, _, is_legacy in raw.values())
    for name, (value, line, is_legacy) in raw.items():
        label = f"ml.{name}" if is_legacy else name
        result = _check_value(name, value, functools.partial(problems.add, line, label))
        if result is not None:
            values[name] = result
    if "condition" not in raw and not problems.items:
        problems.add(None, "condition", "is required, e.g. 'condition: n - o > 0.02 +/- 0.01'")
    elif "condition" not in raw:
        problems.add(None, "condition", "is required")
    if "condition" in values and "method" in values and values["method"] != "auto":
        valid = valid_methods(values["condition"])
        if values["method"] not in valid:
            problems.add(raw["method"][1], "method",
                         f"'{values['method']}' does not apply to this condition (it needs a clause "
                         f"'d < p +/- eps' and a clause on 'n - o'); valid here: {', '.join(valid)}")
    if "labels" in values and "condition" in values:
        _check_labels_on_demand(values, raw, problems)
    if problems.items:
        raise ConfigError(problems.items)

    model = dict(values.get("model", {}))
    if "script" in values and "script" not in model:
        model["script"] = values["script"]
    return EasemlConfig(
        condition=values["condition"],
        condition_text=raw["condition"][0].strip(),
        reliability=values.get("reliability", KEYS["reliability"].default),
        mode=values.get("mode", KEYS["mode"].default),
        adaptivity=values.get("adaptivity", KEYS["adaptivity"].default),
        steps=values.get("steps", KEYS["steps"].default),
        email=values.get("email", ()),
        dataset=values.get("dataset", KEYS["dataset"].default),
        model=model,
        method=values.get("method", KEYS["method"].default),
        label_column=values.get("label_column", KEYS["label_column"].default),
        branches=values.get("branches", ()),
        labels=values.get("labels"),
        id_column=values.get("id_column", KEYS["id_column"].default),
        source=source,
        script=values.get("script"),
        data_mode=values.get("data_mode"),
        legacy=legacy,
    )


def _check_labels_on_demand(values: dict[str, Any], raw: Mapping[str, tuple[Any, int | None, bool]],
                            problems: _Problems) -> None:
    """``labels:`` needs an active-labelling condition, its own file and columns."""
    line = raw["labels"][1]
    try:
        sample_size(values["condition"], values.get("reliability", KEYS["reliability"].default),
                    values.get("adaptivity", KEYS["adaptivity"].default), values.get("steps", KEYS["steps"].default),
                    values.get("method", KEYS["method"].default), labelling="active")
    except SampleSizeError as exc:
        problems.add(line, "labels", f"labels on demand need only the rows where the models disagree "
                     f"labelled, which this condition does not allow: {exc}")
    if values.get("method") == "sequential":
        problems.add(line, "labels", "labels on demand decide on the planned rows at once; method "
                     "'sequential' does not apply (use auto or exact)")
    if values["labels"] == values.get("dataset", KEYS["dataset"].default):
        problems.add(line, "labels", "must be another file than the test set 'dataset'")
    if values.get("id_column", KEYS["id_column"].default) == values.get("label_column", KEYS["label_column"].default):
        problems.add(raw.get("id_column", (None, line))[1], "id_column", "must differ from label_column")


def load_config(path: str | Path = CONFIG_FILE) -> EasemlConfig:
    """Read and validate a configuration file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([f"{p}: {size} bytes; a configuration may have at most {MAX_CONFIG_BYTES}"])
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such file (the repository needs a {CONFIG_FILE})"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{p}: cannot read: {exc}"]) from None
    return parse_config(text, source=str(p))


# -- reference documentation -----------------------------------------------------

def markdown_reference() -> str:
    """docs/config-reference.md, generated from SCHEMA."""

    def fmt(v: Any) -> str:
        if v is None:
            return "(required)"
        return f"`{yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}`"

    rows = "\n".join(f"| `{k.name}` | {k.type} | {fmt(k.default)} | {k.doc} |" for k in SCHEMA)
    legacy = ", ".join(f"`{k}`" for k in LEGACY_KEYS)
    return f"""# `.easeml.yml` reference

<!-- generated by `python -m easeml_buildbot.config --markdown`; a test keeps it in sync -->

The configuration lives at the root of the repository and is always read from the
accepted commit of the repository's **default branch** (never from a pull request, nor
from the branch it targets), so a pull request cannot loosen its own test. It is a YAML
mapping of at most {MAX_CONFIG_BYTES // 1024} KiB read with PyYAML's safe loader; anchors and aliases
(`&name`, `*name`) are refused.

| key | type | default | meaning |
| --- | --- | --- | --- |
{rows}

Example:

```yaml
condition: n - o > 0.02 +/- 0.01
reliability: 0.9999
mode: fp-free
adaptivity: full
steps: 32
email: [ml-team@example.com]
dataset: data/test.csv.gpg
```

## The original ease.ml/ci form

A top-level `ml:` list of single-key maps is accepted too, with the keys {legacy}
(`hybrid` is an alias of `firstChange`; `script` is kept as `model.script`, `data_mode`
is kept as given; the first release's spelling `dataMode` is read as `data_mode`). Keys of the new form may appear beside `ml:` but not twice.

```yaml
ml:
  - script: ./test_model.py
  - condition: n - o > 0.02 +/- 0.01
  - reliability: 0.9999
  - mode: fp-free
  - adaptivity: full
  - steps: 32
```

## Errors

Every problem is reported at once, one per line, as `FILE:LINE: key 'name': message`;
unknown keys get a "did you mean" hint. Check a file with `easeml check-config [PATH]`,
which prints the errors or a paragraph saying what the configuration promises, and see
what it costs with `easeml samples .easeml.yml`.
"""


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--markdown"]:
        sys.stdout.write(markdown_reference())
        return 0
    try:
        cfg = load_config(argv[0] if argv else CONFIG_FILE)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(cfg.summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
