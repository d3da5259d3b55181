"""A stack imports only the SDKs it uses, on every path the program runs: the config check, the
offline render (`python -m render`) and `pulumi up` (__main__.py). Cloudflare's SDK alone costs
seconds of CPU to import, so an unused one is most of a small stack's run time.

Each stack runs in a fresh interpreter: the test process has every SDK loaded already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# Runs in a fresh interpreter; prints the provider SDKs (and cryptography, which only a named
# certificate file needs) loaded after each path, cumulatively.
PROBE = r"""
import json, runpy, sys
root, stack_name, out = sys.argv[1:4]
sys.path.insert(0, root)

def sdks():
    return sorted({m.split(".")[0] for m in sys.modules if m.startswith(("pulumi_", "cryptography"))})

seen = {}
from render.__main__ import main as render_main, stack_config
raw, secret = stack_config(stack_name)
import stack
stack.parse(raw, secret)
seen["check"] = sdks()
assert render_main(["--stack", stack_name, "--out", out]) == 0
seen["render"] = sdks()

import pulumi
from render import offline
pulumi.runtime.set_all_config(offline._config_map(raw), [f"{offline.PROJECT}:{k}" for k in secret])
mocks = offline.StackMocks()
monitor = offline.RecordingMonitor(mocks)
pulumi.runtime.set_mocks(mocks, project=offline.PROJECT, stack=stack_name, preview=False, monitor=monitor)
pulumi.runtime.mocks.test(lambda: runpy.run_path(root + "/__main__.py", run_name="__main__"))()
seen["up"] = sdks()
seen["up_resources"] = len(monitor.registered)
print(json.dumps(seen))
"""


def _sdks_loaded(stack: str, tmp_path: Path) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), stack, str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    seen: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return seen


def test_the_dev_stack_loads_neither_cloudflare_nor_kubernetes(tmp_path: Path) -> None:
    seen = _sdks_loaded("dev", tmp_path)
    for path in ("check", "render", "up"):
        assert not {"pulumi_cloudflare", "pulumi_kubernetes", "pulumi_tls", "cryptography"} & set(seen[path]), (path, seen)  # type: ignore[arg-type]
    # pulumi-command: the gate before Synapse's main starts another release (spec.Gate).
    assert seen["render"] == ["pulumi_command", "pulumi_docker", "pulumi_random"]
    assert seen["up_resources"] == len(json.loads((tmp_path / "out" / "resources.json").read_text()))


def test_a_docker_stack_with_cloudflare_and_acme_loads_no_kubernetes_and_tls_only_for_mas(tmp_path: Path) -> None:
    seen = _sdks_loaded("staging", tmp_path)
    for path in ("check", "render", "up"):
        assert "pulumi_kubernetes" not in seen[path], (path, seen)  # type: ignore[operator]
    # ACME needs no TLS resource; MAS's signing keys (staging enables MAS) are TLS private keys,
    # declared only when the stack builds.
    assert "pulumi_tls" not in seen["check"]  # type: ignore[operator]
    assert "pulumi_tls" in seen["render"]  # type: ignore[operator]
    assert "pulumi_cloudflare" in seen["render"]  # type: ignore[operator]


def test_target_adapters_import_no_part() -> None:
    """The adapters read the target-neutral spec only: no import reaches up into a part (the TLS
    plan, the worker table, ...). components.secrets generates values, it is no part."""
    allowed = ("components.platform", "components.secrets")
    found = []
    for path in sorted((ROOT / "components" / "platform").rglob("*.py")):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("from", "import") and words[1].startswith("components"):
                module = words[1] if words[0] == "import" or words[1] != "components" else f"components.{words[3]}"
                if not module.startswith(allowed):
                    found.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not found
