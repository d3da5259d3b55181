"""One LiveKit participant, with PyPI's `livekit` rtc SDK (the WebRTC stack Element Call's own SDKs
share): join the room the token grants, stay a moment (publishing a microphone track of silence
when asked), leave. Prints one JSON line.

Run in a process of its own, because the SDK resolves the SFU's public hostname itself (the test
gives that process an /etc/hosts in which the stack's names point at loopback).

    python livekit_participant.py URL TOKEN STAY_SECONDS [publish]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from livekit import rtc

CONNECT_TIMEOUT_S = 60.0
SAMPLE_RATE = 48000
FRAME_MS = 10


async def _speak(room: rtc.Room, stay_s: float) -> None:
    """Publish a microphone track and feed it silence in real time for `stay_s`."""
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    options = rtc.TrackPublishOptions()
    options.source = rtc.TrackSource.SOURCE_MICROPHONE
    await room.local_participant.publish_track(track, options)
    frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, SAMPLE_RATE * FRAME_MS // 1000)
    end = time.monotonic() + stay_s
    while time.monotonic() < end:
        await source.capture_frame(frame)


async def participate(url: str, token: str, stay_s: float, publish: bool = False) -> dict[str, object]:
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
    if publish:
        print(json.dumps({**result, "publishing": True}), flush=True)
        await _speak(room, stay_s)
    else:
        await asyncio.sleep(stay_s)
    await room.disconnect()
    return result


def main() -> None:
    url, token, stay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    publish = sys.argv[4:] == ["publish"]
    print(json.dumps(asyncio.run(participate(url, token, stay, publish))), flush=True)


if __name__ == "__main__":
    main()
