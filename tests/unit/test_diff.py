"""The offline diff's comparison: two rendered trees from configs one line apart."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from render import diff, offline
from render.__main__ import write
from tests.conftest import stack_raw

CONTAINER = "docker:index/container:Container"


def _tree(raw: dict[str, Any], out: Path) -> diff.Tree:
    write(offline.run(raw, stack="dev"), out)
    return diff.Tree.load(out)


@pytest.fixture(scope="module")
def upload_size_diff(tmp_path_factory: pytest.TempPathFactory) -> tuple[diff.StackDiff, diff.Tree]:
    base_raw = stack_raw("dev")
    head_raw = copy.deepcopy(base_raw)
    head_raw.setdefault("synapse", {})["max_upload_size"] = "100M"
    tmp = tmp_path_factory.mktemp("diff")
    base = _tree(base_raw, tmp / "base")
    head = _tree(head_raw, tmp / "head")
    return diff.compare("dev", base, head), head


def test_identical_trees_have_no_changes(tmp_path: Path) -> None:
    tree = _tree(stack_raw("dev"), tmp_path / "one")
    again = _tree(stack_raw("dev"), tmp_path / "two")
    d = diff.compare("dev", tree, again)
    assert d.empty
    assert "No changes." in diff.markdown([d])


def test_max_upload_size_changes_exactly_homeserver_nginx_and_their_containers(upload_size_diff: Any) -> None:
    d, head = upload_size_diff
    synapse_services = sorted(s["name"] for s in head.services
                              if any(f["path"] == "/conf/homeserver.yaml" for f in s["files"]))
    assert len(synapse_services) >= 2  # main and the workers

    # Files: homeserver.yaml of every Synapse process, and the proxy's nginx.conf; nothing else.
    expected_files = {f"{name}/conf/homeserver.yaml" for name in synapse_services}
    expected_files.add("synapse-proxy/etc/nginx/nginx.conf")
    assert {f.path for f in d.files} == expected_files
    assert all(f.kind == "changed" and not f.secret for f in d.files)
    for f in d.files:
        removed = [line for line in f.diff if line.startswith("-") and not line.startswith("---")]
        added = [line for line in f.diff if line.startswith("+") and not line.startswith("+++")]
        if f.path.endswith("homeserver.yaml"):
            assert removed == ["-max_upload_size: 50M"] and added == ["+max_upload_size: 100M"]
        else:
            assert [line[0] + line[1:].strip() for line in removed] == ["-client_max_body_size 50M;"]
            assert [line[0] + line[1:].strip() for line in added] == ["+client_max_body_size 100M;"]

    # Resources: exactly the containers that read those files and the config checks that must
    # pass on the new file before those are replaced (the digest label of the changed file), and
    # the file holders their files are uploaded to.
    assert {(r.kind, r.type) for r in d.resources} == {("changed", CONTAINER)}
    checks = {"synapse-check-config"}  # one check for every Synapse process of the host
    readers = set(synapse_services) | checks | {"synapse-proxy"}
    assert {r.name for r in d.resources} == readers | {f"{name}-files" for name in readers}
    for r in d.resources:
        reader = r.name.removesuffix("-files")
        expected = "/etc/nginx/nginx.conf" if reader == "synapse-proxy" else "/conf/homeserver.yaml"
        if r.name == reader:
            assert r.keys == ["labels"], r.name
        else:
            # The upload itself (a check is no service of its own, so its masked uploads are not
            # named by file).
            assert r.keys == (["labels", "uploads"] if reader in checks else ["labels", f"uploads ({expected})"])

    # Services: their description (image, env, ports, file list) did not change.
    assert d.services == []
    assert d.manifests == []


def test_markdown_shows_the_shared_change_once(upload_size_diff: Any) -> None:
    d, _head = upload_size_diff
    text = diff.markdown([d], "main", "WORKTREE")
    assert text.startswith("## Offline render diff: `main` → `WORKTREE`")
    assert "### Stack `dev`" in text
    assert text.count("+max_upload_size: 100M") == 1  # grouped: one block for every homeserver.yaml
    assert "same change" in text
    assert "client_max_body_size 100M;" in text
    assert "| `synapse-main-files` | `docker:index/container:Container` | changed | labels, uploads (/conf/homeserver.yaml) |" \
        in text


def test_secret_files_are_listed_without_content() -> None:
    base = diff.Tree([], [], {"svc/secrets/key": ("old-secret-value", True), "svc/a.conf": ("x = 1\n", False)}, {})
    head = diff.Tree([], [], {"svc/secrets/key": ("new-secret-value", True), "svc/a.conf": ("x = 2\n", False)}, {})
    d = diff.compare("s", base, head)
    secret = next(f for f in d.files if f.path == "svc/secrets/key")
    assert secret.secret and secret.diff == []
    text = diff.markdown([d])
    assert "secret-value" not in text
    assert "`svc/secrets/key`: changed (secret: content not shown)" in text
    assert "+x = 2" in text


def test_added_removed_and_option_changes() -> None:
    def res(resource: str, protect: bool = False, **inputs: Any) -> dict[str, Any]:
        return {"urn": f"urn:{resource}", "type": "docker:index/volume:Volume", "name": resource, "protect": protect,
                "inputs": inputs}

    base = diff.Tree([res("a", name="x"), res("b")], [{"name": "s1", "image": "i:1"}], {}, {})
    head = diff.Tree([res("a", protect=True, name="y"), res("c")], [{"name": "s1", "image": "i:2"},
                                                                     {"name": "s2"}], {}, {})
    d = diff.compare("s", base, head)
    assert [(r.kind, r.name, r.keys) for r in d.resources] == [
        ("changed", "a", ["name", "[protect]"]), ("removed", "b", []), ("added", "c", [])]
    assert [(s.kind, s.name, s.keys) for s in d.services] == [("changed", "s1", ["image"]), ("added", "s2", [])]


def test_long_diffs_and_summaries_are_truncated() -> None:
    old = "".join(f"a fairly long configuration line number {i}\n" for i in range(500))
    new = "".join(f"a fairly long configuration line number {i}, changed\n" for i in range(500))
    files = {f"svc{n}/big.conf": (old + str(n), False) for n in range(60)}
    files_new = {f"svc{n}/big.conf": (new + str(n), False) for n in range(60)}
    d = diff.compare("s", diff.Tree([], [], files, {}), diff.Tree([], [], files_new, {}))
    text = diff.markdown([d])
    assert len(text) <= diff.MAX_CHARS + 200
    assert "more lines" in text
    assert "Summary truncated" in text
    assert text.count("```") % 2 == 0


def test_a_stack_missing_on_one_side_shows_as_added(tmp_path: Path) -> None:
    head = _tree(stack_raw("dev"), tmp_path / "head")
    d = diff.compare("dev", diff.Tree.empty(), head)
    assert d.resources and all(r.kind == "added" for r in d.resources)
    assert {s.name for s in d.services} == {s["name"] for s in head.services}
