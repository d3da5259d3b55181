"""Stand-in for the Pulumi CLI in tests/unit/test_up_dev.py: records each call (its arguments
and the backend it would use) and answers as the real CLI does for the commands the dev scripts
run. It deploys nothing.

Environment: STANDIN_LOG (a JSON line per call), STANDIN_OUTPUTS (what `stack output --json`
prints), STANDIN_EXPORT (the resources `up` leaves in the state), STANDIN_SERVE (a JSON argv `up`
starts in the background, as the real `up` starts the containers; its pid goes to
STANDIN_SERVE_PID; with STANDIN_UP_FAILS, `up` fails as on a provider's error). The version is read from `pulumi-version` beside this file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(sys.argv[0]).resolve().parent
VERSION = (HERE / "pulumi-version").read_text().strip()
PROJECT = "matrix-stack"


def home() -> Path:
    return Path(os.environ.get("PULUMI_HOME") or Path(os.environ["HOME"]) / ".pulumi")


def backend() -> str | None:
    if os.environ.get("PULUMI_BACKEND_URL"):
        return os.environ["PULUMI_BACKEND_URL"]
    credentials = home() / "credentials.json"
    if credentials.exists():
        return json.loads(credentials.read_text()).get("current")
    return None


def option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def state_file(stack: str) -> Path:
    url = backend() or ""
    if not url.startswith("file://"):
        sys.exit(f"error: the stand-in only keeps file backends, not {url!r}")
    root = Path(os.path.expanduser(url.removeprefix("file://")))
    return root / ".pulumi" / "stacks" / PROJECT / f"{stack}.json"


def no_stack(stack: str) -> None:
    print(f"error: no stack named '{stack}' found", file=sys.stderr)
    sys.exit(255)


def main(args: list[str]) -> None:
    with open(os.environ["STANDIN_LOG"], "a") as log:
        log.write(json.dumps({"program": "pulumi", "path": sys.argv[0], "argv": args, "backend": backend(),
                              "passphrase": "PULUMI_CONFIG_PASSPHRASE" in os.environ}) + "\n")
    words = [a for a in args if not a.startswith("-")]
    if args[:1] == ["version"]:
        print(f"v{VERSION}")
    elif args[:1] == ["login"]:
        url = words[1] if len(words) > 1 else ("file://~" if "--local" in args else "https://api.pulumi.com")
        home().mkdir(parents=True, exist_ok=True)
        (home() / "credentials.json").write_text(json.dumps({"current": url}))
        print(f"Logged in to {url}")
    elif args[:2] == ["stack", "select"]:
        stack = option(args, "--stack", "-s") or words[2]
        path = state_file(stack)
        if not path.exists():
            if "--create" not in args:
                no_stack(stack)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"version": 3, "deployment": {"resources": []}}))
            print(f"Created stack '{stack}'")
    elif args[:1] == ["up"]:
        if os.environ.get("STANDIN_UP_FAILS"):
            print("error: update failed", file=sys.stderr)
            sys.exit(255)
        stack = option(args, "--stack", "-s") or "dev"
        path = state_file(stack)
        if not path.exists():
            no_stack(stack)
        path.write_text(Path(os.environ["STANDIN_EXPORT"]).read_text())
        if os.environ.get("STANDIN_SERVE"):
            server = subprocess.Popen(json.loads(os.environ["STANDIN_SERVE"]), start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            Path(os.environ["STANDIN_SERVE_PID"]).write_text(str(server.pid))
        print(f"Updating ({stack})\n\nResources:\n    + created\n")
    elif args[:2] == ["stack", "output"]:
        print(Path(os.environ["STANDIN_OUTPUTS"]).read_text())
    elif args[:2] == ["stack", "export"]:
        path = state_file(option(args, "--stack", "-s") or "dev")
        if not path.exists():
            no_stack(path.stem)
        print(path.read_text())
    elif args[:1] == ["destroy"]:
        path = state_file(option(args, "--stack", "-s") or "dev")
        if not path.exists():
            no_stack(path.stem)
        targets = {args[i + 1] for i, a in enumerate(args) if a == "--target"}
        state = json.loads(path.read_text())
        kept = [r for r in state["deployment"]["resources"] if targets and r["urn"] not in targets]
        state["deployment"]["resources"] = kept
        path.write_text(json.dumps(state))
        print("Destroying\n\nResources:\n    - deleted\n")


main(sys.argv[1:])
