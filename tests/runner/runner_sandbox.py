"""Model directories for sandbox tests: a Dockerfile on a local base image plus one script.

Each script is run as the model's command; ``PRELUDE`` gives it ``write_predictions``."""

from __future__ import annotations

from pathlib import Path

from support.models import DEFAULT_BASE_IMAGE

PRELUDE = '''\
import os, sys
def write_predictions(value=0, n=None, name="predictions.csv"):
    n = int(os.environ["EASEML_ROWS"]) if n is None else n
    with open(os.path.join(os.environ["EASEML_OUTPUT"], name), "w") as f:
        f.write("prediction\\n" + "".join(f"{value}\\n" for _ in range(n)))
'''


def model_dir(root: Path, script: str, *, base_image: str = DEFAULT_BASE_IMAGE,
              dockerfile: str | None = None, extra: dict[str, str] | None = None) -> Path:
    """A directory with ``model.py`` (PRELUDE + script) and a Dockerfile that runs it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.py").write_text(PRELUDE + script)
    (root / "Dockerfile").write_text(dockerfile if dockerfile is not None else (
        f"FROM {base_image}\nWORKDIR /model\nCOPY model.py /model/model.py\n"
        'CMD ["python3", "/model/model.py"]\n'))
    for rel, content in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    return root


def features_csv(path: Path, rows: int = 20, cols: int = 3) -> Path:
    path.write_text(",".join(f"x{i}" for i in range(cols)) + "\n"
                    + "".join(",".join(str(r * cols + c) for c in range(cols)) + "\n" for r in range(rows)))
    return path
