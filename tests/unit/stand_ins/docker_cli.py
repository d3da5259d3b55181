"""Stand-in for the docker CLI in tests/unit/test_up_dev.py: records each call and answers
`docker --host URL version --format '{{json .}}'` and `docker ps` as the real CLI does, for an
engine that STANDIN_DOCKER says is running, stopped or refusing this user (the messages are the
real CLI's). STANDIN_DOCKER_VERSION is the engine's version; STANDIN_DOCKER_PS what `ps` lists.
"""

import json
import os
import sys

CLIENT = {"Version": "20.10.24+dfsg1", "ApiVersion": "1.41", "DefaultAPIVersion": "1.41", "Os": "linux",
          "Arch": "amd64", "Context": "default"}


def main(args: list[str]) -> int:
    with open(os.environ["STANDIN_LOG"], "a") as log:
        log.write(json.dumps({"program": "docker", "argv": args}) + "\n")
    url = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if args[:1] == ["--host"]:
        url, args = args[1], args[2:]
    state = os.environ.get("STANDIN_DOCKER", "running")
    if state == "stopped":
        if args[:1] == ["version"]:
            print(json.dumps({"Client": CLIENT, "Server": None}))
        print(f"Cannot connect to the Docker daemon at {url}. Is the docker daemon running?", file=sys.stderr)
        return 1
    if state == "denied":
        if args[:1] == ["version"]:
            print(json.dumps({"Client": CLIENT, "Server": None}))
        path = url.removeprefix("unix://")
        print(f"permission denied while trying to connect to the Docker daemon socket at {url}: Get "
              f"\"http://%2Fvar%2Frun%2Fdocker.sock/v1.24/version\": dial unix {path}: connect: permission denied",
              file=sys.stderr)
        return 1
    if args[:1] == ["version"]:
        version = os.environ.get("STANDIN_DOCKER_VERSION", "20.10.24+dfsg1")
        print(json.dumps({"Client": CLIENT, "Server": {"Version": version, "ApiVersion": "1.41"}}))
    elif args[:1] == ["ps"]:
        print(os.environ.get("STANDIN_DOCKER_PS", ""))
    return 0


sys.exit(main(sys.argv[1:]))
