"""Synapse releases other than the pinned one, from PyPI, for the upgrade drill.

- PREVIOUS: the release before the pinned one, in a virtualenv of its own, with every dependency
  at the version requirements/test.txt locks (so uv's cache serves them) and its bytecode
  compiled once. The drill boots the cluster at this release and upgrades it to the pinned one.
- UNREADABLE: a release whose SCHEMA_VERSION (83) is below the pinned release's
  SCHEMA_COMPAT_VERSION (84): it cannot read a database the pinned release has written. Only its
  package files are installed (no dependencies): the drill asks its schema module, as the
  upgrade gate asks an image it does not know, and never runs it.

`python -m tests.integration.synapse_releases` installs both (scripts/test, with network); the
drill fails with this command in its message when they are missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = "1.162.0"
UNREADABLE = "1.99.0"
CACHE = Path(os.environ.get("MATRIX_STACK_CACHE", Path.home() / ".cache" / "matrix-stack"))
INSTALL = "python -m tests.integration.synapse_releases"


def previous_venv() -> Path:
    return CACHE / f"synapse-{PREVIOUS}"


def previous_python() -> Path:
    return previous_venv() / "bin" / "python"


def unreadable_tree() -> Path:
    """The UNREADABLE release's package files (a PYTHONPATH entry)."""
    return CACHE / f"synapse-{UNREADABLE}-files"


def _stamp(where: Path) -> Path:
    return where / ".installed"


def missing() -> list[str]:
    return [str(p) for p in (previous_venv(), unreadable_tree()) if not _stamp(p).exists()]


def _uv(*args: str) -> None:
    subprocess.run(["uv", *args], check=True)


def _constraints() -> Path:
    """Every package requirements/test.txt locks, except Synapse itself: the previous release's
    dependencies resolve to the locked versions uv has cached."""
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^ \\\n]+)", (ROOT / "requirements" / "test.txt").read_text(),
                      re.M)
    lines = [f"{name}=={version}" for name, version in pins if name != "matrix-synapse"]
    handle = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    handle.write("\n".join(lines) + "\n")
    handle.close()
    return Path(handle.name)


def install() -> None:
    venv = previous_venv()
    if not _stamp(venv).exists():
        print(f"installing Synapse {PREVIOUS} into {venv} (once per release)")
        constraints = _constraints()
        try:
            _uv("venv", "-q", "--clear", str(venv), "--python", "3.11")
            _uv("pip", "install", "-q", "--compile-bytecode", "--python", str(venv / "bin" / "python"),
                "-c", str(constraints), f"matrix-synapse[postgres,redis]=={PREVIOUS}")
        finally:
            constraints.unlink()
        _stamp(venv).touch()
    tree = unreadable_tree()
    if not _stamp(tree).exists():
        print(f"installing Synapse {UNREADABLE}'s package files into {tree} (once per release)")
        _uv("pip", "install", "-q", "--no-deps", "--target", str(tree), "--python", sys.executable,
            f"matrix-synapse=={UNREADABLE}")
        _stamp(tree).touch()


if __name__ == "__main__":
    install()
