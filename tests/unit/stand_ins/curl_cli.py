"""Stand-in for curl in tests/unit/test_up_dev.py, downloading Pulumi's installer: with
STANDIN_CURL=offline it fails as curl does without a network; otherwise it hands out an installer
that records its arguments and installs the pulumi stand-in (STANDIN_PULUMI) at the version its
--version names, the official installer's options."""

import json
import os
import sys

INSTALLER = r"""#!/bin/sh
printf '%s\n' "$@" > "$STANDIN_INSTALLER_ARGS"
version=latest root="$HOME/.pulumi"
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version=$2; shift ;;
    --install-root) root=$2; shift ;;
  esac
  shift
done
mkdir -p "$root/bin"
cp "$STANDIN_PULUMI" "$root/bin/pulumi"
chmod +x "$root/bin/pulumi"
echo "$version" > "$root/bin/pulumi-version"
echo "Pulumi $version is now installed"
"""


def main(args: list[str]) -> int:
    with open(os.environ["STANDIN_LOG"], "a") as log:
        log.write(json.dumps({"program": "curl", "argv": args}) + "\n")
    if os.environ.get("STANDIN_CURL") == "offline":
        print("curl: (6) Could not resolve host: get.pulumi.com", file=sys.stderr)
        return 6
    out = args[args.index("-o") + 1] if "-o" in args else None
    if out:
        with open(out, "w") as f:
            f.write(INSTALLER)
    else:
        sys.stdout.write(INSTALLER)
    return 0


sys.exit(main(sys.argv[1:]))
