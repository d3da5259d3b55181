"""The Docker declarations of a stack at another commit: its tree is taken with `git archive`
and its own program runs under its own mocks (`render.offline`, in a child interpreter with that
tree first on the path), and the declared `docker:` resources come back with their plain inputs,
so the applier can create them, or apply the next commit's over them.

The base of an upgrade test is the commit a pull request starts from: its merge base with main
(`origin/main` when the clone has it, else `main`). On main itself that is HEAD, and the base is
the commit before it (HEAD~1): every push to main is then an upgrade from the previous one.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run in the child: the tree's own offline render, each docker resource as JSON.
_DECLARE = """
import json, sys
from render import offline
raw = json.loads(sys.stdin.read())
run = offline.run(raw, stack="dev")
out = []
for r in run.resources:
    if not r.type.startswith("docker:"):
        continue
    out.append({"urn": r.urn, "type": r.type, "name": r.name, "dependencies": list(r.dependencies),
                "delete_before_replace": r.delete_before_replace,
                "property_dependencies": [[k, list(v)] for k, v in getattr(r, "property_dependencies", ())],
                "inputs": r.plain_inputs()})
json.dump(out, sys.stdout, default=str)
"""


@dataclass(frozen=True)
class Declared:
    """One declared resource, as render.offline.Registered offers it to the applier."""

    urn: str
    type: str
    name: str
    inputs: Mapping[str, Any]
    dependencies: tuple[str, ...] = ()
    delete_before_replace: bool = False
    property_dependencies: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def plain_inputs(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.inputs))


@dataclass
class Declarations:
    resources: list[Declared] = field(default_factory=list)

    def of_type(self, type_token: str) -> list[Declared]:
        return [r for r in self.resources if r.type == type_token]

    def by_name(self, name: str) -> Declared:
        matches = [r for r in self.resources if r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name}")
        return matches[0]


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def upgrade_base(root: Path) -> str:
    """The commit an upgrade test starts from (see the module): the merge base with main, or
    HEAD~1 on main itself."""
    head = git(root, "rev-parse", "HEAD")
    for main in ("origin/main", "main"):
        try:
            base = git(root, "merge-base", "HEAD", main)
        except RuntimeError:
            continue
        return git(root, "rev-parse", "HEAD~1") if base == head else base
    raise RuntimeError("no main branch in this clone to take the upgrade's base from")


def checkout(root: Path, ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=root, capture_output=True, timeout=120)
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {ref}: {archive.stderr.decode().strip()}")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def declare(tree: Path, raw: Mapping[str, Any]) -> Declarations:
    """The docker resources the program in `tree` declares for the stack config `raw`."""
    done = subprocess.run([sys.executable, "-c", _DECLARE], cwd=tree, input=json.dumps(raw), capture_output=True,
                          text=True, timeout=600, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise RuntimeError(f"the program at {tree} did not render:\n{done.stderr[-3000:]}")
    return Declarations([Declared(r["urn"], r["type"], r["name"], r["inputs"], tuple(r["dependencies"]),
                                  bool(r["delete_before_replace"]),
                                  tuple((k, tuple(v)) for k, v in r["property_dependencies"]))
                         for r in json.loads(done.stdout)])
