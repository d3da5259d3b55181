"""The architecture's contracts (.importlinter), checked by import-linter: the layers, parts that
never import each other, and no cycles. Proved able to fail: a copy of the tree where one part
imports another is refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # import-linter imports nothing: it reads the source files of the root packages on sys.path.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(tree / ".importlinter")],
                          cwd=tree, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for name in ("components", "config", "render"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tree / ".importlinter")
    return tree


def test_the_contracts_hold() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_part_importing_another_part_is_refused(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    assert _lint(tree).returncode == 0
    ntfy = tree / "components" / "ntfy" / "render.py"
    ntfy.write_text(ntfy.read_text() + "\nfrom components.element_call import render as call_render  # noqa\n")
    done = _lint(tree)
    assert done.returncode != 0
    assert "No part imports another BROKEN" in done.stdout
    assert "components.ntfy.render -> components.element_call.render" in done.stdout


def test_a_part_reading_the_catalog_is_refused(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    dns = tree / "components" / "view" / "records.py"
    dns.write_text(dns.read_text() + "\nfrom components import catalog  # noqa\n")
    done = _lint(tree)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and "components.catalog" in done.stdout
