"""`python -m render.diff` end to end: the base commit comes from git archive, the head is the
work tree, both rendered with this interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_diff_of_head_against_the_work_tree(tmp_path: Path) -> None:
    # The suite runs from a clone (CI's too): no git checkout is a broken setup, not a skip.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert head.returncode == 0, f"not a git checkout: {head.stderr}"
    out = tmp_path / "diff.md"
    done = subprocess.run([sys.executable, "-m", "render.diff", "--base", "HEAD", "--head", "WORKTREE",
                           "--stack", "dev", "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text == done.stdout
    assert text.startswith("## Offline render diff: `HEAD` → `WORKTREE`")
    assert "### Stack `dev`" in text
    assert "[secret]" not in text or "secret: content not shown" in text


def test_a_bad_base_ref_fails_cleanly() -> None:
    done = subprocess.run([sys.executable, "-m", "render.diff", "--base", "no-such-ref-xyz", "--stack", "dev"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "cannot read 'no-such-ref-xyz'" in done.stderr
    assert "Traceback" not in done.stderr
