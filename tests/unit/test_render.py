"""The offline render: the tree it writes, byte-identical on a second run.

One render runs the command line in a fresh interpreter (another hash seed, so set ordering
cannot leak into the output); the others call its main() in this process, which has the SDKs
imported already."""

from __future__ import annotations

import asyncio
import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest

from render import offline
from render.__main__ import main as render_main
from tests.conftest import ROOT, stack_raw


def _render_in_a_fresh_interpreter(out: Path, stack: str = "dev") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "render", "--stack", stack, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _match, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def test_dev_render_writes_the_tree_and_is_byte_identical(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    done = _render_in_a_fresh_interpreter(first)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("rendered stack dev:")
    assert render_main(["--stack", "dev", "--out", str(second)]) == 0
    assert _same_tree(first, second)
    resources = json.loads((first / "resources.json").read_text())
    services = json.loads((first / "services.json").read_text())
    assert any(r["type"] == "docker:index/container:Container" for r in resources)
    names = {s["name"] for s in services}
    assert {"synapse-main", "synapse-proxy", "synapse-postgres"} <= names
    main = next(s for s in services if s["name"] == "synapse-main")
    assert "PGPASSWORD" not in main["env"]  # the password is in its database config file
    assert next(f for f in main["files"] if f["path"] == "/secrets/database.yaml")["secret"]
    for f in main["files"]:
        assert (first / f["rendered"]).is_file()
    assert (first / "files/synapse-main/conf/homeserver.yaml").is_file()


def test_render_masks_every_secret_in_resources(tmp_path: Path) -> None:
    assert render_main(["--stack", "dev", "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "resources.json").read_text()
    secret_values = [(tmp_path / "out" / "files" / "synapse-postgres" / "secrets" / "postgres-password").read_text()]
    assert secret_values
    for value in secret_values:
        assert value not in text


def test_render_of_a_bad_stack_fails_with_the_clear_error(tmp_path: Path) -> None:
    # SystemExit with a message: Python prints it without a traceback.
    with pytest.raises(SystemExit) as exited:
        render_main(["--stack", "no-such-stack", "--out", str(tmp_path / "out")])
    message = str(exited.value)
    assert message.startswith("render: no stack file Pulumi.no-such-stack.yaml (stacks: ")
    assert {"dev", "staging", "prod"} <= set(message.split("(stacks: ")[1].rstrip(")").split(", "))
    assert not (tmp_path / "out").exists()


def test_a_run_after_another_stacks_run_has_its_own_root() -> None:
    """Runs in one process (tests, the benchmark) each get their own stack resource: no resource
    is parented to an earlier run's stack."""
    offline.run(stack_raw("dev"), stack="first")

    async def client() -> None:
        pass

    asyncio.run(client())  # leaves no current event loop behind
    run = offline.run(stack_raw("dev"), stack="dev")
    roots = {r.parent for r in run.resources if "::pulumi:pulumi:Stack::" in r.parent}
    assert roots == {"urn:pulumi:dev::matrix-stack::pulumi:pulumi:Stack::matrix-stack-dev"}


def test_a_run_pauses_the_cyclic_collector_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    import stack

    during: list[bool] = []
    build = stack.build

    def watched(cfg: object) -> object:
        during.append(gc.isenabled())
        return build(cfg)  # type: ignore[arg-type]

    monkeypatch.setattr(stack, "build", watched)
    assert gc.isenabled()
    offline.run(stack_raw("dev"), stack="dev")
    assert during == [False]
    assert gc.isenabled()  # a test session (or any caller) keeps collecting afterwards
