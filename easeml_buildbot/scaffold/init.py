"""``easeml init``: write a model repository that satisfies the model contract.

Why a function and not just files to copy: ``--existing`` must add only what is missing and
leave every existing file byte-identical, which needs one place that decides, per file,
whether to write it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

# target path in the repository -> template name under templates/
TEMPLATE_FILES: dict[str, str] = {
    ".easeml.yml": "easeml.yml",
    "Dockerfile": "Dockerfile",
    ".dockerignore": "dockerignore",
    ".gitignore": "gitignore",
    "predict.py": "predict.py",
    "train.py": "train.py",
    "model/README.md": "model/README.md",
    "model/default_class.txt": "model/default_class.txt",
    "README.md": "README.md",
}
EXECUTABLE = frozenset({"predict.py", "train.py"})
# When the repository already has a README.md, the test-set section goes beside it.
README_FALLBACK = "README.easeml.md"
README_MARKER = "## The test set"


class ScaffoldError(Exception):
    """A user error: the directory cannot be scaffolded as asked."""


@dataclass(frozen=True)
class ScaffoldResult:
    directory: Path
    created: tuple[str, ...]
    kept: tuple[str, ...]  # already there, left byte-identical


def _render(template: str, name: str) -> str:
    text = files("easeml_buildbot.scaffold").joinpath("templates", template).read_text()
    if template == "README.md":
        text = Template(text).substitute(name=name)
    return text


def scaffold(directory: str | os.PathLike[str], *, existing: bool = False) -> ScaffoldResult:
    """Write the template files into ``directory`` (created if missing).

    Without ``existing`` the directory must not already hold any of the files (nothing is
    ever overwritten); with it, only missing files are written.
    """
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise ScaffoldError(f"{root}: exists and is not a directory")
    present = [target for target in TEMPLATE_FILES if (root / target).exists()]
    if present and not existing:
        raise ScaffoldError(
            f"{root}: already has {', '.join(present)}; "
            "use `easeml init --existing` to add only what is missing"
        )
    root.mkdir(parents=True, exist_ok=True)
    name = root.resolve().name
    created: list[str] = []
    kept: list[str] = []
    for target, template in TEMPLATE_FILES.items():
        path = root / target
        if path.exists() or path.is_symlink():
            if (target == "README.md" and not (root / README_FALLBACK).exists()
                    and README_MARKER not in path.read_text(errors="replace")):
                _write(root / README_FALLBACK, _render(template, name), executable=False)
                created.append(README_FALLBACK)
            kept.append(target)
            continue
        _write(path, _render(template, name), executable=target in EXECUTABLE)
        created.append(target)
    return ScaffoldResult(directory=root, created=tuple(created), kept=tuple(kept))


def _write(path: Path, text: str, *, executable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # "x": never clobber a file that appeared since we looked.
    with path.open("x", newline="\n") as f:
        f.write(text)
    if executable:
        path.chmod(0o755)
