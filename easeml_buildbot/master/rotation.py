"""What to do when a test set's uses are spent: the one rotation text.

The rule (docs/custody.md#rotation, ``custody.policy``): a test set is retired after H uses,
or at its first pass under ``firstChange``; it is never reserved again. A *new* test set
(new labelled samples, never rows of the old one) encrypted to the service's key is a new
ciphertext, hence a new dataset id and a fresh budget of H uses in the ledger. The owners
encrypt it to a **new path**, point ``dataset:`` of ``.easeml.yml`` at it, and **merge it on
the default branch**: the test set and ``.easeml.yml`` are only ever read from the default
branch, so a pull request that carries them is not evaluated and takes effect once merged.

``rotation_text`` is quoted by the owners' mail (``master/mail``), the check run and
docs/user-guide.md (``tests/email/test_docs_example.py`` keeps the guide in sync).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DATASET = "data/test.csv.gpg"
DEFAULT_PUBLIC_KEY = "easeml_pub.asc"


@dataclass(frozen=True)
class Step:
    text: str  # one sentence (Markdown: backticks for names)
    commands: tuple[str, ...] = ()


def next_dataset_path(path: str = DEFAULT_DATASET) -> str:
    """A new path next to ``path``: ``data/test.csv.gpg`` -> ``data/test-2.csv.gpg`` -> ``-3``..."""
    head, _, name = path.rpartition("/")
    stem, dot, ext = name.partition(".")
    m = re.fullmatch(r"(.*)-(\d+)", stem)
    stem = f"{m.group(1)}-{int(m.group(2)) + 1}" if m else f"{stem}-2"
    return (head + "/" if head else "") + stem + dot + ext


def plain_name(path: str) -> str:
    """The plaintext file a ciphertext path is made from: ``data/test-2.csv.gpg`` -> ``test-2.csv``."""
    name = path.rsplit("/", 1)[-1]
    for ext in (".gpg", ".asc"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def rotation_steps(dataset: str = DEFAULT_DATASET, *, public_key: str = DEFAULT_PUBLIC_KEY,
                   samples: int | None = None) -> tuple[Step, ...]:
    """The rotation procedure for a repository whose test set is at ``dataset``."""
    new = next_dataset_path(dataset)
    plain = plain_name(new)
    size = f"at least {samples} labelled samples" if samples else "the labelled samples `easeml samples` names"
    return (
        Step(f"Collect new labelled data, {size}; never rows of the old test set (the models "
             "have adapted to it)."),
        Step(f"Encrypt it to the service's public key at a new path, point `dataset:` in `.easeml.yml` "
             f"at that path and remove the old file (`{plain}` itself stays out of git):",
             (f"easeml dataset encrypt --key {public_key} {plain} {new}",
              f"git rm {dataset}",
              f"sed -i 's#^dataset:.*#dataset: {new}#' .easeml.yml",
              f"git add {new} .easeml.yml",
              'git commit -m "easeml: new test set"')),
        Step("Merge it on the default branch (push it there, or merge a pull request with it: that pull "
             "request itself is not evaluated, since the test set and `.easeml.yml` are read from the "
             "default branch only). The new file has a new dataset id, so the ledger starts a fresh "
             "budget of `steps` uses; the old test set's history stays. The condition, reliability or "
             "steps may change in the same commit (`easeml samples` gives the size they need)."),
    )


def rotation_text(dataset: str = DEFAULT_DATASET, *, public_key: str = DEFAULT_PUBLIC_KEY,
                  samples: int | None = None, markdown: bool = True) -> str:
    """The rotation procedure as Markdown (``markdown=True``: fenced commands) or plain text."""
    out = []
    for i, step in enumerate(rotation_steps(dataset, public_key=public_key, samples=samples), start=1):
        text = step.text if markdown else step.text.replace("`", "")
        out.append(f"{i}. {text}")
        if step.commands:
            if markdown:
                out.append("")
                out.append("   ```sh")
                out.extend(f"   {c}" for c in step.commands)
                out.append("   ```")
                out.append("")
            else:
                out.extend(f"     {c}" for c in step.commands)
    return "\n".join(out).rstrip() + "\n"
