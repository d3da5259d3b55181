"""The offline render: the tree it writes, byte-identical on a second run."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _render(out: Path, stack: str = "dev") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "render", "--stack", stack, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _match, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def test_dev_render_writes_the_tree_and_is_byte_identical(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    done = _render(first)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("rendered stack dev:")
    assert _render(second).returncode == 0
    assert _same_tree(first, second)
    resources = json.loads((first / "resources.json").read_text())
    services = json.loads((first / "services.json").read_text())
    assert any(r["type"] == "docker:index/container:Container" for r in resources)
    names = {s["name"] for s in services}
    assert {"synapse-main", "synapse-proxy", "synapse-postgres"} <= names
    main = next(s for s in services if s["name"] == "synapse-main")
    assert main["env"]["PGPASSWORD"] == "[secret]"
    for f in main["files"]:
        assert (first / f["rendered"]).is_file()
    assert (first / "files/synapse-main/conf/homeserver.yaml").is_file()


def test_render_masks_every_secret_in_resources(tmp_path: Path) -> None:
    assert _render(tmp_path / "out").returncode == 0
    text = (tmp_path / "out" / "resources.json").read_text()
    secret_values = [
        line.split("=", 1)[1]
        for env in (tmp_path / "out" / "env").glob("*.env")
        for line in env.read_text().splitlines()
        if line.startswith(("PGPASSWORD=", "POSTGRES_PASSWORD="))
    ]
    assert secret_values
    for value in secret_values:
        assert value not in text


def test_render_of_a_bad_stack_fails_with_the_clear_error(tmp_path: Path) -> None:
    done = _render(tmp_path / "out", stack="no-such-stack")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
