"""One LiveKit participant, with PyPI's `livekit` rtc SDK (the WebRTC stack Element Call's own SDKs
share): join the room the token grants, stay a moment, leave. Prints one JSON line.

Run in a process of its own, because the SDK resolves the SFU's public hostname itself (the test
gives that process an /etc/hosts in which the stack's names point at loopback).

    python livekit_participant.py URL TOKEN STAY_SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from livekit import rtc

CONNECT_TIMEOUT_S = 60.0


async def participate(url: str, token: str, stay_s: float) -> dict[str, object]:
    room = rtc.Room()
    started = time.monotonic()
    try:
        await asyncio.wait_for(room.connect(url, token, rtc.RoomOptions(auto_subscribe=False)), CONNECT_TIMEOUT_S)
    except Exception as exc:  # the refusal is the result
        return {"joined": False, "error": f"{type(exc).__name__}: {exc}"}
    joined_s = time.monotonic() - started
    result: dict[str, object] = {
        "joined": True,
        "join_s": joined_s,
        "room": room.name,
        "identity": room.local_participant.identity,
        "connection_state": int(room.connection_state),
    }
    await asyncio.sleep(stay_s)
    await room.disconnect()
    return result


def main() -> None:
    url, token, stay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    print(json.dumps(asyncio.run(participate(url, token, stay))), flush=True)


if __name__ == "__main__":
    main()
