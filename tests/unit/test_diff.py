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
    expected_files.add("synapse-proxy/etc/nginx/live/nginx.conf")
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

    # Resources: exactly the containers that read homeserver.yaml and the config check that must
    # pass on the new file before those are replaced (the digest label of the changed file, and
    # the holder of their files, whose name carries the files' digest), the holders their files
    # are uploaded to, and the proxy's live nginx.conf (its holder and publisher): never the
    # proxy itself.
    assert {(r.kind, r.type) for r in d.resources} == {("changed", CONTAINER)}
    checks = {"synapse-check-config"}  # one check for every Synapse process of the host
    readers = set(synapse_services) | checks
    live = {"synapse-proxy-live-files", "synapse-proxy-live-publish"}
    assert {r.name for r in d.resources} == readers | {f"{name}-files" for name in readers} | live
    renamed = {"synapse-check-config"} | {n for n in synapse_services if n.startswith("synapse-generic")}
    for r in d.resources:
        reader = r.name.removesuffix("-files")
        if r.name in live:
            continue
        if r.name == reader:
            # The digest label, the holder's name and, for a container named after its revision
            # (replaced new first), its own name.
            assert r.keys == (["labels", "name", "volumes"] if reader in renamed else ["labels", "volumes"]), r.name
        else:
            # The upload itself (a check is no service of its own, so its masked uploads are not
            # named by file).
            assert r.keys == (["labels", "name", "uploads"] if reader in checks
                              else ["labels", "name", "uploads (/conf/homeserver.yaml)"])
    holder = next(r for r in d.resources if r.name == "synapse-proxy-live-files")
    assert holder.keys == ["labels", "name", "uploads (/etc/nginx/live/nginx.conf)"]

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
    assert "| `synapse-main-files` | `docker:index/container:Container` | changed | labels, name, uploads " \
           "(/conf/homeserver.yaml) |" in text


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


# ---------------------------------------------------------------- what a change costs


def _nginx(generic: int) -> str:
    """A proxy config in the rendered form (components/synapse/routing, components/edge)."""
    servers = "\n".join(f"        server synapse-generic-{i}:910{i} max_fails=0;" for i in range(1, generic + 1))
    return f"""http {{
    map $request_method $synapse_account_data_by_method {{
        default synapse_main;
        GET synapse_generic;
        HEAD synapse_generic;
    }}
    upstream synapse_main {{
        least_conn;
        server synapse-main:8008 max_fails=0;
        keepalive 32;
    }}
    upstream synapse_generic {{
        least_conn;
{servers}
        keepalive 32;
    }}
    server {{
        listen 8080;
        server_name matrix.example.org;
        set $synapse_route none;
        location = /.well-known/matrix/server {{
            return 200 '{{}}';
        }}
        location ~* ^/_matrix/client/(r0|v3|unstable)/.*/account_data {{
            set $synapse_route account_data;
            proxy_pass http://$synapse_account_data_by_method;
        }}
        location ~* ^/_matrix/client/(v2_alpha|r0|v3)/sync$ {{
            set $synapse_route sync;
            proxy_pass http://synapse_generic;
        }}
        location ~* ^(/_matrix|/_synapse/client) {{
            set $synapse_route main;
            proxy_pass http://synapse_main;
        }}
    }}
    server {{
        listen 8080;
        server_name ntfy.example.org;
        set $synapse_route site-ntfy;
        location / {{
            proxy_pass http://ntfy:8080;
        }}
    }}
    server {{
        listen 8081;
        location = /health {{
            return 200 'OK';
        }}
    }}
}}
"""


def _container(name: str, depends: tuple[str, ...] = (), **inputs: Any) -> dict[str, Any]:
    return {"urn": f"urn:{name}", "type": CONTAINER, "name": name, "dependsOn": [f"urn:{d}" for d in depends],
            "inputs": {"name": name, "image": "img:1", "memory": 512, "envs": ["A=1"], **inputs}}


def _stack(generic: int = 1, changed: dict[str, dict[str, Any]] | None = None, trigger: bool = False,
           new_first: tuple[str, ...] = ()) -> diff.Tree:
    """A small Docker stack: proxy, main, `generic` generic workers, ntfy, PostgreSQL, a one-shot
    check; `changed` overrides a container's inputs; `new_first` are replaced new first."""
    synapse = ["synapse-main", *(f"synapse-generic-{i}" for i in range(1, generic + 1))]
    names = ["synapse-postgres", "synapse-check-config", *synapse, "ntfy", "synapse-proxy"]
    depends: dict[str, tuple[str, ...]] = {n: ("synapse-postgres",) for n in [*synapse, "synapse-check-config"]}
    depends["synapse-proxy"] = (*synapse, "ntfy")
    resources = [_container(n, depends.get(n, ()), **(changed or {}).get(n, {})) for n in names]
    if trigger:  # an input of the proxy fed by the containers it routes to (before live files)
        resources[-1]["inputDependencies"] = {"labels": [f"urn:{n}" for n in depends["synapse-proxy"]]}
    for r in resources:
        r["deleteBeforeReplace"] = r["name"] not in new_first
    services = [{"name": n} for n in names if n != "synapse-check-config"]
    files = {"synapse-proxy/etc/nginx/nginx.conf": (_nginx(generic), False)}
    return diff.Tree(resources, services, files, {})


def _costs(base: diff.Tree, head: diff.Tree) -> dict[str, diff.Cost]:
    return {c.name: c for c in diff.compare("s", base, head).costs}


def test_a_memory_only_change_is_updated_in_place() -> None:
    d = diff.compare("s", _stack(), _stack(changed={"synapse-generic-1": {"memory": 1024}}))
    (cost,) = d.costs
    assert (cost.name, cost.effect, cost.unavailable) == ("synapse-generic-1", "updated in place", [])
    assert "- `synapse-generic-1`: **updated in place**\n" in diff.markdown([d])


@pytest.mark.parametrize("inputs", [
    {"uploads": [{"file": "/conf/homeserver.yaml", "content": "new"}]},
    {"envs": ["A=2"]},
    {"image": "img:2"},
    {"memory": 1024, "labels": [{"label": "digest", "value": "2"}]},
])
def test_an_uploads_env_or_image_change_replaces_the_container(inputs: dict[str, Any]) -> None:
    costs = _costs(_stack(), _stack(changed={"ntfy": inputs}))
    assert costs["ntfy"].effect == "replaced (delete first)"
    # A site's own service: its hostname is down meanwhile.
    assert costs["ntfy"].unavailable == ["`ntfy.example.org` (the whole site)"]


def test_the_proxy_replaced_takes_every_site_down() -> None:
    d = diff.compare("s", _stack(), _stack(changed={"synapse-proxy": {"image": "nginx:2"}}))
    assert [(c.name, c.effect) for c in d.costs] == [("synapse-proxy", "replaced (delete first)")]
    assert d.costs[0].unavailable == ["all sites: `matrix.example.org`, `ntfy.example.org`"]
    assert "- `synapse-proxy`: **replaced (delete first)**; unavailable meanwhile: all sites: `matrix.example.org`, " \
           "`ntfy.example.org`" in diff.markdown([d])


def test_the_only_generic_worker_replaced_names_its_route_groups() -> None:
    costs = _costs(_stack(1), _stack(1, changed={"synapse-generic-1": {"image": "img:2"}}))
    assert costs["synapse-generic-1"].unavailable == ["`matrix.example.org`: account_data (GET/HEAD), sync"]


def test_one_of_two_generic_workers_replaced_leaves_the_other_serving() -> None:
    costs = _costs(_stack(2), _stack(2, changed={"synapse-generic-1": {"image": "img:2"}}))
    generic = costs["synapse-generic-1"]
    assert generic.effect == "replaced (delete first)" and generic.unavailable == []
    assert generic.note == "`synapse_generic`: 1 of 2 instances down at once, the others keep serving its routes"
    # Both replaced at once: the pool is down.
    both: dict[str, dict[str, Any]] = {f"synapse-generic-{i}": {"image": "img:2"} for i in (1, 2)}
    costs = _costs(_stack(2), _stack(2, changed=both))
    assert costs["synapse-generic-2"].unavailable == ["`matrix.example.org`: account_data (GET/HEAD), sync"]


def test_main_replaced_names_mains_routes_and_postgres_its_dependents() -> None:
    costs = _costs(_stack(), _stack(changed={"synapse-main": {"envs": ["A=2"]}, "synapse-postgres": {"image": "pg:17"},
                                      "synapse-check-config": {"image": "img:2"}}))
    assert costs["synapse-main"].unavailable == ["`matrix.example.org`: account_data (other methods), main"]
    assert costs["synapse-postgres"].unavailable == ["to its dependents: `synapse-generic-1`, `synapse-main`"]
    assert costs["synapse-check-config"].unavailable == []
    assert "one-shot" in costs["synapse-check-config"].note


def _workload(kind: str, image: str, replicas: int = 1) -> str:
    return (f"apiVersion: apps/v1\nkind: {kind}\nmetadata:\n  name: w\nspec:\n  replicas: {replicas}\n"
            f"  template:\n    spec:\n      containers:\n      - name: w\n        image: {image}\n")


def test_a_changed_pod_template_rolls_its_workload() -> None:
    base = diff.Tree([], [], {}, {"statefulset-redis": _workload("StatefulSet", "valkey:8"),
                                  "deployment-web": _workload("Deployment", "web:1", 2),
                                  "configmap-x": "kind: ConfigMap\ndata: {a: '1'}\n"})
    head = diff.Tree([], [], {}, {"statefulset-redis": _workload("StatefulSet", "valkey:9"),
                                  "deployment-web": _workload("Deployment", "web:2", 2),
                                  "configmap-x": "kind: ConfigMap\ndata: {a: '2'}\n"})
    d = diff.compare("s", base, head)
    assert [(c.name, c.effect, c.unavailable) for c in d.costs] == [
        ("deployment-web", "rolled", []),
        ("statefulset-redis", "rolled", ["down while its one pod restarts"]),
    ]


def test_the_upload_size_change_replaces_synapse_and_reloads_the_proxy(upload_size_diff: Any) -> None:
    """The shared homeserver.yaml and nginx.conf change: main and the single-instance workers
    are deleted first (their routes down for one restart), the generic worker replaced new first
    (nothing down), the proxy never replaced: its live nginx.conf is applied by reload."""
    d, _head = upload_size_diff
    costs = {c.name: c for c in d.costs}
    assert "synapse-proxy" not in costs
    publish = costs["synapse-proxy-live-publish"]
    assert publish.unavailable == [] and "graceful reload" in publish.note
    assert costs["synapse-generic-1"].effect == "replaced (new first)" and costs["synapse-generic-1"].unavailable == []
    assert costs["synapse-main"].effect == "replaced (delete first)"
    (main_routes,) = costs["synapse-main"].unavailable
    assert main_routes.endswith(", main") and "main_only" in main_routes and "sync" not in main_routes
    assert costs["synapse-media-repository-1"].unavailable == ["`localhost`: media"]
    assert all(c.unavailable == [] for n, c in costs.items() if n.endswith("-files"))
    text = diff.markdown([d])
    assert "- `synapse-generic-1`: **replaced (new first)**; the new container serves before the old one stops" in text


def test_adding_a_worker_costs_only_that_worker_and_the_proxys_config(tmp_path: Path) -> None:
    """generic 1 -> 2 on dev: the worker and its files added; the proxy's live nginx.conf and
    the configuration check (one-shot) renewed; no running container replaced, nothing down.
    Removing it again: the worker deleted once the proxy has applied its routes without it."""
    base_raw = stack_raw("dev")
    head_raw = copy.deepcopy(base_raw)
    head_raw["synapse"]["workers"]["counts"]["generic"] = 2
    base, head = _tree(base_raw, tmp_path / "base"), _tree(head_raw, tmp_path / "head")
    d = diff.compare("dev", base, head)
    assert sorted(r.name for r in d.resources if r.kind == "added") == ["synapse-generic-2", "synapse-generic-2-files"]
    assert sorted(c.name for c in d.costs) == ["synapse-check-config", "synapse-check-config-files",
                                               "synapse-proxy-live-files", "synapse-proxy-live-publish"]
    assert all(c.unavailable == [] for c in d.costs)
    back = diff.compare("dev", head, base)
    removed = {c.name: c for c in back.costs}["synapse-generic-2"]
    assert removed.effect == "removed" and "once the proxy's routes without it are applied" in removed.note
    assert all(c.unavailable == [] for c in back.costs)


def test_a_delete_before_replace_chain_takes_its_dependents_down_first() -> None:
    """Pulumi deletes first every dependent an input of which comes from a container replaced
    delete first: a proxy with an input fed by its upstreams goes down with a generic worker,
    although the other instance keeps serving."""
    d = diff.compare("s", _stack(2, trigger=True),
                     _stack(2, changed={"synapse-generic-1": {"image": "img:2"}}, trigger=True))
    costs = {c.name: c for c in d.costs}
    assert costs["synapse-generic-1"].note.startswith("`synapse_generic`: 1 of 2 instances down at once")
    assert costs["synapse-proxy"].effect == "replaced (delete first) with `synapse-generic-1`"
    assert costs["synapse-proxy"].unavailable == ["all sites: `matrix.example.org`, `ntfy.example.org`"]
    # Replaced new first, a container starts no chain and takes nothing down.
    d = diff.compare("s", _stack(2, trigger=True, new_first=("synapse-generic-1",)),
                     _stack(2, changed={"synapse-generic-1": {"image": "img:2"}}, trigger=True,
                            new_first=("synapse-generic-1",)))
    assert [(c.name, c.effect, c.unavailable) for c in d.costs] == [("synapse-generic-1", "replaced (new first)", [])]
    # A memory change replaces nothing.
    d = diff.compare("s", _stack(trigger=True), _stack(changed={"synapse-main": {"memory": 1}}, trigger=True))
    assert [(c.name, c.effect) for c in d.costs] == [("synapse-main", "updated in place")]


def test_the_render_records_what_feeds_each_input(upload_size_diff: Any) -> None:
    """A Synapse container's `volumes` come from its holder (the holder's name), its labels from
    the configuration check: the render records each input's resources, and no container has a
    replacement trigger any more (a change of its upstreams never replaces the proxy)."""
    _d, head = upload_size_diff
    names = {r["urn"]: r["name"] for r in head.resources}
    main = next(r for r in head.resources if r["name"] == "synapse-main")
    assert "synapse-main-files" in {names[u] for u in main["inputDependencies"]["volumes"]}
    assert {names[u] for u in main["inputDependencies"]["labels"]} == {"synapse-check-config"}
    assert not any(r.get("replacementTrigger") for r in head.resources)
