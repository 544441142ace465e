"""``easeml migrate``: turn an ease.ml/ci repository into one evaluated by easeml-buildbot.

What an ease.ml/ci repository holds (as its README and scripts document it): a legacy
``.easeml.yml`` (``ml:`` list with ``script``, ``condition``, ..., ``data_mode``/``dataMode``),
the test set ``data_test/test.txt.enc`` (a GnuPG-encrypted, headerless, tab-separated file,
one sample per line), a Dockerfile whose command runs the script as
``SCRIPT test.txt data_test/``, and a script that predicts and hands its predictions to
``eval_accuracy(y_data, y_pred, ...)`` from ``libs/easeml.py``, a file the ease.ml/ci master
injected before building. Its key file ``easeml_sec.asc`` holds the public and the private
key block.

What comes out (a copy; the source is not changed):

- ``.easeml.yml`` in the current form, with the same condition, reliability, mode,
  adaptivity, steps and email;
- ``data/test.csv.gpg``: the same rows as CSV with a header (``c0, c1, ...``; the label
  column is ``label``), encrypted to the service's public key;
- ``Dockerfile``: the original's base image, its requirements, and as command
  ``easeml_migrated.py``, which writes the features as the headerless TSV the script expects
  (the label column holds a fixed placeholder: the model never sees labels here) and runs the
  script; ``libs/easeml.py`` is replaced, as ease.ml/ci's master did, by one whose
  ``eval_accuracy`` writes the predictions instead of scoring them. The original Dockerfile is
  kept as ``Dockerfile.easemlci``; the old encrypted file and the GitHub workflow are left out.

The plaintext exists only in a private directory (tmpfs where there is one) while migrating.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

OLD_TEST_SET = "data_test/test.txt.enc"
NEW_TEST_SET = "data/test.csv.gpg"
SHIM = "easeml_migrated.py"
LEFT_OUT = (OLD_TEST_SET, "data_test/test.txt", ".github/workflows/easemlci.yml")
_PUBLIC_BLOCK = re.compile(rb"-----BEGIN PGP PUBLIC KEY BLOCK-----.*?-----END PGP PUBLIC KEY BLOCK-----\r?\n?", re.S)


class MigrateError(ValueError):
    """The repository cannot be migrated; the message names the file (and line)."""


@dataclass(frozen=True)
class Migration:
    out: Path
    rows: int
    columns: int
    label_index: int
    samples_needed: int
    base_image: str
    left_out: tuple[str, ...]


def read_tsv(path: Path, max_line: int = 1 << 20) -> list[list[str]]:
    """ease.ml/ci's test set: headerless, tab-separated, one sample per line, every line with
    the same number of fields (the error names the line)."""
    rows: list[list[str]] = []
    with open(path, encoding="utf-8", newline="") as fh:
        for lineno, line in enumerate(fh, 1):
            if len(line) > max_line:
                raise MigrateError(f"{OLD_TEST_SET}:{lineno}: line longer than {max_line} characters")
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if rows and len(fields) != len(rows[0]):
                raise MigrateError(f"{OLD_TEST_SET}:{lineno}: {len(fields)} tab-separated fields, "
                                   f"the first line has {len(rows[0])}")
            rows.append(fields)
    if not rows:
        raise MigrateError(f"{OLD_TEST_SET}: the test set is empty")
    if len(rows[0]) < 2:
        raise MigrateError(f"{OLD_TEST_SET}: one field per line; a test set needs features and a label")
    return rows


def _base_image(dockerfile: Path) -> str | None:
    if not dockerfile.is_file():
        return None
    image = None
    for line in dockerfile.read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "FROM":
            image = next((w for w in words[1:] if not w.startswith("--")), None)
    return image


def _script_of(cfg: Any, src: Path) -> str:
    script = cfg.script or (cfg.model or {}).get("script")
    if not script:
        raise MigrateError(f"{src / '.easeml.yml'}: no 'script:' entry (the ease.ml/ci script to run)")
    p = (src / script).resolve()
    if src.resolve() not in p.parents or not p.is_file():
        raise MigrateError(f"{src / '.easeml.yml'}: script {script!r} is not a file of the repository")
    return p.relative_to(src.resolve()).as_posix()


def migrate(src: str | os.PathLike[str], out: str | os.PathLike[str], *, key: str | os.PathLike[str],
            passphrase: str | None = None, public_key: str | os.PathLike[str] | None = None,
            label_index: int = -1, classes: tuple[str, ...] = (), placeholder: str | None = None,
            base_image: str | None = None) -> Migration:
    """Write the migrated copy of ``src`` to ``out`` (module docstring). ``key`` decrypts the
    old test set (``easeml_sec.asc``); the new one is encrypted to ``public_key`` (default: the
    public block of ``key``, so the same key pair serves on). ``label_index``: the label's
    field in the TSV (default the last); ``classes``: names for the columns of a 2-D
    ``y_pred`` (argmax -> name); ``placeholder``: what the script reads in the label field
    (default the first class, else ``0``)."""
    from easeml_buildbot.config import ConfigError, load_config, parse_config
    from easeml_buildbot.custody.dataset import _decrypt_to, encrypt_dataset
    from easeml_buildbot.custody.gpghome import private_tmpdir, remove_tree, secure_tmp_base

    src, out = Path(src), Path(out)
    if out.exists() and any(out.iterdir()):
        raise MigrateError(f"{out}: exists and is not empty")
    try:
        cfg = load_config(src / ".easeml.yml")
    except ConfigError as exc:
        raise MigrateError(str(exc)) from None
    script = _script_of(cfg, src)
    enc = src / OLD_TEST_SET
    if not enc.is_file():
        raise MigrateError(f"{enc}: no encrypted test set (ease.ml/ci keeps it at {OLD_TEST_SET})")
    image = base_image or _base_image(src / "Dockerfile") or "easeml/python:bookworm"

    tmp = private_tmpdir("ds", secure_tmp_base())
    try:
        plain = tmp / "test.txt"
        _decrypt_to(enc, Path(key), passphrase, plain)
        rows = read_tsv(plain)
        width = len(rows[0])
        index = label_index % width if -width <= label_index < width else None
        if index is None:
            raise MigrateError(f"--label-index {label_index}: the test set has {width} fields per line")
        names = [("label" if i == index else f"c{i}") for i in range(width)]
        csv_path = tmp / "test.csv"
        with open(os.open(csv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w",
                  encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(names)
            w.writerows(rows)
        if public_key is None:
            blocks = _PUBLIC_BLOCK.findall(Path(key).read_bytes())
            if not blocks:
                raise MigrateError(f"{key}: holds no public key block; pass --public-key easeml_pub.asc")
            public_key = tmp / "public.asc"
            public_key.write_bytes(blocks[0])
        n_rows = len(rows)
        del rows
        shutil.copytree(src, out, dirs_exist_ok=True, ignore=_ignore(src))
        (out / NEW_TEST_SET).parent.mkdir(parents=True, exist_ok=True)
        encrypt_dataset(public_key, csv_path, out / NEW_TEST_SET)
    finally:
        remove_tree(tmp)

    if (out / "Dockerfile").exists():
        (out / "Dockerfile").rename(out / "Dockerfile.easemlci")
    requirements = (src / "requirements.txt").is_file()
    (out / "Dockerfile").write_text(DOCKERFILE.format(
        base_image=image,
        requirements="COPY requirements.txt /app/requirements.txt\n"
                     "RUN pip install --no-cache-dir -r /app/requirements.txt\n" if requirements else ""))
    shim_constants = dict(SCRIPT=script, LABEL_INDEX=index,
                          PLACEHOLDER=placeholder if placeholder is not None else (classes[0] if classes else "0"),
                          CLASSES=list(classes))
    (out / SHIM).write_text(SHIM_PY.replace("@CONSTANTS@", "\n".join(
        f"{k} = {json.dumps(v)}" for k, v in shim_constants.items())))
    (out / "libs").mkdir(exist_ok=True)
    (out / "libs" / "easeml.py").write_text(LIBS_EASEML_PY)
    new_cfg: dict[str, Any] = {
        "condition": cfg.condition_text, "reliability": cfg.reliability, "mode": cfg.mode,
        "adaptivity": cfg.adaptivity, "steps": cfg.steps, "email": list(cfg.email),
        "dataset": NEW_TEST_SET, "label_column": "label",
    }
    text = ("# migrated from ease.ml/ci by `easeml migrate` (see docs/user-guide.md)\n"
            + yaml.safe_dump(new_cfg, sort_keys=False, allow_unicode=True))
    migrated = parse_config(text, str(out / ".easeml.yml"))  # what we write must be valid
    (out / ".easeml.yml").write_text(text)
    left = tuple(p for p in LEFT_OUT if (src / p).exists())
    return Migration(out=out, rows=n_rows, columns=width, label_index=index,
                     samples_needed=migrated.required_samples().labels, base_image=image, left_out=left)


def _ignore(src: Path):
    root = src.resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).resolve().relative_to(root)
        skip = {n for n in names if n == ".git"}
        skip |= {n for n in names if (rel / n).as_posix() in LEFT_OUT}
        return skip
    return ignore


DOCKERFILE = """\
# written by `easeml migrate`: runs the ease.ml/ci script under easeml-buildbot's model
# contract (docs/model-contract.md); the original is Dockerfile.easemlci
FROM {base_image}
WORKDIR /app
{requirements}COPY . /app
CMD ["python3", "/app/easeml_migrated.py"]
"""

SHIM_PY = '''\
"""Written by `easeml migrate`: runs an ease.ml/ci script under easeml-buildbot's model contract.

The features ($EASEML_FEATURES, CSV with a header) become the headerless TSV the script
reads, with PLACEHOLDER in the label field (the model never sees labels); the script is run
as ease.ml/ci ran it (SCRIPT test.txt DIR/), and libs/easeml.py's eval_accuracy writes the
predictions to $EASEML_OUTPUT/predictions.csv.
"""
import csv
import json
import os
import subprocess
import sys

@CONSTANTS@
HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    scratch = os.path.join(os.environ.get("TMPDIR") or "/tmp", "easeml-ci")
    os.makedirs(scratch, exist_ok=True)
    with open(os.environ["EASEML_FEATURES"], encoding="utf-8", newline="") as fh, \\
            open(os.path.join(scratch, "test.txt"), "w", encoding="utf-8") as out:
        rows = csv.reader(fh)
        next(rows, None)
        for row in rows:
            row.insert(LABEL_INDEX, PLACEHOLDER)
            out.write("\\t".join(row) + "\\n")
    env = dict(os.environ, EASEML_MIGRATED_CLASSES=json.dumps(CLASSES),
               PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.call([sys.executable, os.path.join(HERE, SCRIPT), "test.txt", scratch + "/"],
                           cwd=HERE, env=env)


if __name__ == "__main__":
    sys.exit(main())
'''

LIBS_EASEML_PY = '''\
"""Written by `easeml migrate` in place of the file ease.ml/ci's master injected: the
script's predictions go to easeml-buildbot, which scores them where the model cannot see."""
import csv
import json
import os


def eval_accuracy(y_data, y_pred, func=None):
    """Write y_pred (one row per sample; a row of scores becomes its argmax, named by the
    classes given to `easeml migrate --classes`) as predictions.csv. y_data and func are
    ignored: the labels are not here."""
    classes = json.loads(os.environ.get("EASEML_MIGRATED_CLASSES") or "[]")
    preds = y_pred.tolist() if hasattr(y_pred, "tolist") else list(y_pred)
    out = []
    for p in preds:
        if isinstance(p, (list, tuple)):
            if len(p) == 1:
                p = p[0]
            else:
                i = max(range(len(p)), key=p.__getitem__)
                p = classes[i] if classes else i
        out.append(p)
    with open(os.path.join(os.environ["EASEML_OUTPUT"], "predictions.csv"), "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\\n")
        w.writerow(["prediction"])
        w.writerows([p] for p in out)
    print("wrote %d predictions" % len(out))
'''


# -- command line ----------------------------------------------------------------

def _run(args: argparse.Namespace) -> int:
    from easeml_buildbot.custody.dataset import DatasetError
    from easeml_buildbot.custody.keys import KeysError, resolve_passphrase

    try:
        passphrase = resolve_passphrase(args.passphrase_file, required=False)
        m = migrate(args.repo, args.out, key=args.key, passphrase=passphrase, public_key=args.public_key,
                    label_index=args.label_index,
                    classes=tuple(c for c in (args.classes or "").split(",") if c),
                    placeholder=args.placeholder_label, base_image=args.base_image)
    except (MigrateError, DatasetError, KeysError, OSError) as exc:
        print(f"easeml migrate: {exc}", file=sys.stderr)
        return 1
    print(f"migrated {args.repo} -> {m.out}: {m.rows} rows x {m.columns} fields (label: field "
          f"{m.label_index}) re-encrypted to {NEW_TEST_SET}; the condition needs {m.samples_needed} rows")
    if m.samples_needed > m.rows:
        print(f"warning: the test set has {m.rows} rows, fewer than the {m.samples_needed} the "
              "condition needs: evaluations will be refused until a larger test set is committed")
    print(f"base image: {m.base_image} (the worker must allow it: docs/operator-guide.md)")
    for p in m.left_out:
        print(f"left out: {p}")
    print("next: review the copy, commit it (git add -A) and push it to the repository the service watches")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("migrate", help="turn an ease.ml/ci repository into an easeml-buildbot one",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", help="the ease.ml/ci repository (a checkout)")
    p.add_argument("--out", required=True, help="new directory for the migrated copy")
    p.add_argument("--key", required=True, help="the key that decrypts the old test set "
                   "(ease.ml/ci's easeml_sec.asc or easeml_priv.asc)")
    p.add_argument("--passphrase-file", help="the key's passphrase (default: $EASEML_KEY_PASSPHRASE)")
    p.add_argument("--public-key", help="encrypt the new test set to this key "
                   "(default: the public block in --key)")
    p.add_argument("--label-index", type=int, default=-1,
                   help="0-based field of the label in the TSV lines (default: the last)")
    p.add_argument("--classes", help="comma-separated class names, for scripts whose y_pred has one "
                   "score per class (column i -> name i)")
    p.add_argument("--placeholder-label", help="what the script reads in the label field "
                   "(default: the first class, else 0)")
    p.add_argument("--base-image", help="FROM of the new Dockerfile (default: the original's)")
    p.set_defaults(func=_run)
