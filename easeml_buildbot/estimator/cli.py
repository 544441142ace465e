"""``easeml samples``, ``easeml check-config`` and ``easeml evaluate``.

User errors (bad condition, bad config, unreadable input) print one clear message naming
the file/line/field to stderr and return 2 (``evaluate``: 0 pass, 1 fail), except
``check-config``, whose answer is the validation itself: 0 valid, 1 invalid.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from easeml_buildbot.config import CONFIG_FILE, KEYS, ConfigError, EasemlConfig, load_config
from easeml_buildbot.estimator.condition import ConditionSyntaxError, parse_condition
from easeml_buildbot.estimator.decision import DecisionError, Verdict, decide
from easeml_buildbot.estimator.samples import (
    ADAPTIVITIES,
    LABELLINGS,
    METHODS,
    SampleSize,
    SampleSizeError,
    d_clause_hint,
    sample_size,
)

EXIT_USAGE = 2
PLAN_SETTINGS = ("reliability", "adaptivity", "steps", "method")  # sample_size() keywords, also config keys


class InputError(ValueError):
    """An input file that cannot be read as one value per row."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "samples", help="how many test samples a condition or config needs",
        description="Print the labelled (and unlabelled) test samples a condition needs so that every "
        "verdict over H uses of one test set holds with the given reliability.")
    p.add_argument("config", nargs="?", help=f"a {CONFIG_FILE} to read the settings from")
    p.add_argument("--condition", "-c", help="e.g. 'n - o > 0.02 +/- 0.01' (instead of a config)")
    p.add_argument("--reliability", "-r", type=float, help=f"1 - delta (default {KEYS['reliability'].default})")
    p.add_argument("--adaptivity", "-a", choices=ADAPTIVITIES + ("hybrid",), help=f"default {KEYS['adaptivity'].default}")
    p.add_argument("--steps", "-H", type=int, help=f"uses of one test set (default {KEYS['steps'].default})")
    p.add_argument("--method", "-m", choices=METHODS + ("binomial",),
                   help=f"default {KEYS['method'].default} (fewest labels)")
    p.add_argument("--labelling", choices=LABELLINGS, default="full",
                   help="active: label only the samples on which the two models disagree")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_samples)

    p = subparsers.add_parser(
        "check-config", help=f"validate a {CONFIG_FILE} and say what it promises",
        description="Print every problem (FILE:LINE: key: message), or a paragraph summarising the guarantee.")
    p.add_argument("path", nargs="?", default=CONFIG_FILE)
    p.add_argument("--json", action="store_true", help="print the validated config and its sample size as JSON")
    p.set_defaults(func=cmd_check_config)

    p = subparsers.add_parser(
        "evaluate", help="decide a config's condition from labels and predictions files",
        description="Score predictions (CSV, NPY or JSONL; one value per row) against labels and print "
        "the verdict. Exit code 0 for pass, 1 for fail, 2 for bad input.")
    p.add_argument("--config", required=True, help=f"the {CONFIG_FILE}")
    p.add_argument("--labels", required=True, help="labels file (CSV column named by label_column, or one column)")
    p.add_argument("--new", required=True, help="the new model's predictions")
    p.add_argument("--old", help="the old model's predictions (needed when the condition uses o or d)")
    p.add_argument("--all-rows", action="store_true",
                   help="decide on every row; by default, like the service, on the first rows the plan needs")
    p.add_argument("--json", action="store_true", help="print Verdict.to_dict() as JSON")
    p.set_defaults(func=cmd_evaluate)


def _err(message: str) -> int:
    print(f"easeml: {message}", file=sys.stderr)
    return EXIT_USAGE


# -- samples ---------------------------------------------------------------------

def _format_samples(s: SampleSize) -> str:
    lines = [
        f"condition:   {s.condition}",
        f"reliability: {s.reliability}   adaptivity: {s.adaptivity}   steps: {s.steps}   labelling: {s.labelling}",
        f"labels:      {s.labels}",
        f"unlabeled:   {s.unlabeled}",
        f"rows:        {s.rows}   (of a fully labelled test set)",
        f"method:      {s.method}   (labels per method: "
        + ", ".join(f"{m} {n}" for m, n in s.candidates.items()) + ")",
    ]
    for c in s.clauses:
        lines.append(f"  clause {c.index + 1}: {c.clause:<32} {c.technique:<18} labels {c.labels:>9}  "
                     f"unlabeled {c.unlabeled:>9}")
    return "\n".join(lines)


def cmd_samples(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {k: KEYS[k].default for k in PLAN_SETTINGS}  # the .easeml.yml defaults
    if args.config and args.condition:
        return _err("give either a config file or --condition, not both")
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        condition: Any = cfg.condition
        settings.update({k: getattr(cfg, k) for k in PLAN_SETTINGS})
    elif args.condition:
        try:
            condition = parse_condition(args.condition)
        except ConditionSyntaxError as exc:
            return _err(f"--condition: {exc}")
    else:
        return _err(f"give a {CONFIG_FILE} or --condition (see 'easeml samples --help')")
    settings.update({k: getattr(args, k) for k in PLAN_SETTINGS if getattr(args, k) is not None})
    try:
        s = sample_size(condition, labelling=args.labelling, **settings)
    except SampleSizeError as exc:
        return _err(str(exc))
    print(json.dumps(s.to_dict(), indent=2) if args.json else _format_samples(s))
    return 0


# -- check-config ------------------------------------------------------------------

def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.path)
        if args.json:  # one sample-size computation either way (summary() makes its own)
            out = json.dumps({"ok": True, "config": cfg.to_dict(), "samples": cfg.required_samples().to_dict()},
                             indent=2)
        else:
            out = cfg.summary()
            hint = d_clause_hint(cfg.condition, cfg.reliability, cfg.adaptivity, cfg.steps, cfg.method)
            if hint:
                out += f"\nhint: {hint}."
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except SampleSizeError as exc:
        print(f"{args.path}: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


# -- evaluate --------------------------------------------------------------------

def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _normalise(values: list[Any]) -> np.ndarray:
    """Numbers compare as numbers ("1" == 1.0), anything else as text; an empty cell or
    null is a missing label (NaN / None: active labelling)."""
    try:
        return np.asarray([math.nan if _missing(v) else float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray([None if _missing(v) else str(v) for v in values], dtype=object)


def read_column(path: str | Path, column: str | None = None) -> np.ndarray:
    """One value per row from a .npy, .jsonl or .csv file (a named column or the only one)."""
    p = Path(path)
    try:
        if p.suffix == ".npy":
            a = np.load(p, allow_pickle=False)
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
            if a.ndim != 1:
                raise InputError(f"{p}: expected one value per row, got an array of shape {a.shape}")
            return a.astype(np.float64) if a.dtype.kind in "biuf" else _normalise(a.tolist())
        if p.suffix in (".jsonl", ".ndjson"):
            out: list[Any] = []
            with p.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        v = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{p}:{i}: not JSON: {exc.msg}") from None
                    if isinstance(v, dict):
                        keys = [k for k in (column, "prediction", "label") if k and k in v]
                        if keys:
                            v = v[keys[0]]
                        elif len(v) == 1:
                            (v,) = v.values()
                        else:
                            raise InputError(f"{p}:{i}: object without a '{column or 'prediction'}' field")
                    if isinstance(v, list):
                        if len(v) != 1:
                            raise InputError(f"{p}:{i}: expected one value per row")
                        v = v[0]
                    out.append(v)
            return _normalise(out)
        with p.open(encoding="utf-8", newline="") as fh:
            rows = [r or [""] for r in csv.reader(fh)]  # a blank line is an empty cell (no label)
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, csv.Error) as exc:  # csv.Error is no ValueError (e.g. a cell beyond the field limit)
        raise InputError(f"{p}: {exc}") from None
    if not rows:
        raise InputError(f"{p}: empty file")
    header = rows[0]
    idx = None
    for name in (column, "prediction", "label"):
        if name and name in header:
            idx, rows = header.index(name), rows[1:]
            break
    if idx is None:
        if len(header) != 1:
            raise InputError(f"{p}: {len(header)} columns and none named '{column or 'prediction'}'")
        idx = 0
        try:
            float(header[0])
        except ValueError:
            if len(rows) > 1 and all(_is_float(r[0]) for r in rows[1:]):
                rows = rows[1:]  # a one-column header
    try:
        return _normalise([r[idx] for r in rows])
    except IndexError:
        raise InputError(f"{p}: a row has fewer than {idx + 1} columns") from None


def _is_float(s: str) -> bool:
    if not s.strip():
        return True  # an empty cell (a missing label) does not make a row a header
    try:
        float(s)
        return True
    except ValueError:
        return False


def format_verdict(v: Verdict) -> str:
    lines = [f"{v.outcome.upper()}  ({v.raw} before mode {v.mode})   condition: {v.condition}"]
    for name in ("n", "o", "d"):
        est, iv = v.estimates.get(name), v.intervals.get(name)
        if est is not None and iv is not None:
            lines.append(f"  {name} = {est:.4f}   [{iv[0]:.4f}, {iv[1]:.4f}]")
    for c in v.clauses:
        mark = " <- decided" if c.index == v.deciding_clause else ""
        lines.append(f"  clause {c.index + 1}: {c.clause:<30} estimate {c.estimate:+.4f} "
                     f"[{c.lower:+.4f}, {c.upper:+.4f}] {c.outcome} ({c.technique}){mark}")
    lines.append(f"  samples used {v.samples_used} (needed {v.samples_needed}), method {v.method}, "
                 f"reliability {v.reliability} over {v.steps} uses ({v.adaptivity})")
    lines.extend(f"  note: {n}" for n in v.notes)
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    try:
        cfg: EasemlConfig = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    try:
        labels = read_column(args.labels, cfg.label_column)
        new = read_column(args.new)
        old = read_column(args.old) if args.old else None
        plan = cfg.required_samples()
        # the service decides on the first plan.rows rows of the test set: so do we (same verdict)
        rows = None if args.all_rows or len(labels) <= plan.rows else plan.rows
        v = decide(cfg.condition, labels, new, old, reliability=cfg.reliability, adaptivity=cfg.adaptivity,
                   steps=cfg.steps, mode=cfg.mode, method=cfg.method, plan=plan, rows=rows)
    except (InputError, DecisionError, SampleSizeError) as exc:
        return _err(str(exc))
    if rows is not None:
        print(f"easeml: decided on rows 1-{rows} of {len(labels)} (the rows the plan needs, as the service "
              "does; --all-rows for every row)", file=sys.stderr)
    print(json.dumps(v.to_dict(), indent=2) if args.json else format_verdict(v))
    return 0 if v.outcome == "pass" else 1
