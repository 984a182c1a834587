"""``speechpipe mic``: stream the default microphone to a live server and print what comes back.

Capture goes through :mod:`sounddevice` (PortAudio): 16 kHz mono int16 in 20 ms blocks, handed
from PortAudio's thread to the event loop through a bounded queue. Partials are rewritten in place
on a terminal; finals are printed as lines. Ctrl-C sends ``stop`` and waits for the last finals.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

from speechpipe.pipeline.clients.client import StreamResult, stream_pcm
from speechpipe.pipeline.protocol import Start

RATE = 16000
FRAME_MS = 20


class MicError(RuntimeError):
    """No usable microphone (no PortAudio, no input device, device busy)."""


def open_input(rate: int = RATE, device: str | int | None = None):
    """Check that a capture device exists; returns the sounddevice module and the device info."""
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio's shared library is missing
        raise MicError(
            f"audio capture is unavailable: {exc} (install PortAudio, e.g. `apt-get install libportaudio2`)"
        ) from None
    try:
        info = sd.query_devices(device, kind="input")
    except (ValueError, sd.PortAudioError) as exc:
        raise MicError(f"no audio input device found ({exc}); plug in a microphone or pass --device") from None
    return sd, info


async def mic_frames(sd, device, stop: asyncio.Event, rate: int = RATE) -> AsyncIterator[bytes]:
    """Yield 20 ms int16 frames from the microphone until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=500)  # 10 s; beyond it frames are dropped
    overflows = 0

    def push(data: bytes) -> None:
        nonlocal overflows
        try:
            queue.put_nowait(data)
        except asyncio.QueueFull:
            overflows += 1

    def callback(indata, frames, time_info, status) -> None:  # PortAudio's thread
        loop.call_soon_threadsafe(push, bytes(indata))

    block = rate * FRAME_MS // 1000
    try:
        stream = sd.RawInputStream(
            samplerate=rate, blocksize=block, device=device, channels=1, dtype="int16", callback=callback
        )
    except sd.PortAudioError as exc:
        raise MicError(f"cannot open the microphone: {exc}") from None
    with stream:
        while not stop.is_set():
            getter = asyncio.ensure_future(queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
    if overflows:
        print(f"speechpipe: {overflows} audio block(s) dropped (the connection was too slow)", file=sys.stderr)


def caption_line(text: str, stable: str, width: int = 200) -> str:
    """A partial's last ``width`` characters for a terminal: the committed words (``stable``)
    plainly, the unstable tail dimmed (ANSI faint)."""
    stable = stable if text.startswith(stable) else ""
    cut = max(0, len(text) - width)
    shown_stable, tail = text[cut : max(cut, len(stable))], text[max(cut, len(stable)) :]
    return shown_stable + (f"\x1b[2m{tail}\x1b[0m" if tail else "")


class LinePrinter:
    """Partials rewritten in place on a terminal, finals as lines."""

    def __init__(self, stream=sys.stdout, show_latency: bool = True) -> None:
        self.out = stream
        self.tty = stream.isatty()
        self.show_latency = show_latency
        self._partial = False

    def __call__(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "partial" and self.tty:
            self.out.write("\r\x1b[2K" + caption_line(msg["text"], msg.get("stable") or ""))
            self.out.flush()
            self._partial = True
        elif kind == "final":
            self._clear()
            latency = f"  ({msg['latency_s']:.2f} s)" if self.show_latency else ""
            if msg["text"]:
                print(f"[{msg['start']:7.2f}-{msg['end']:7.2f}] {msg['text']}{latency}", file=self.out, flush=True)
        elif kind == "error":
            self._clear()
            print(f"speechpipe: server error {msg['code']}: {msg['message']}", file=sys.stderr, flush=True)

    def _clear(self) -> None:
        if self._partial:
            self.out.write("\r\x1b[2K")
            self._partial = False


async def run_mic(
    url: str, token: str | None = None, device: str | int | None = None, reconnect: int = 5
) -> StreamResult:
    """Stream the microphone until Ctrl-C (SIGINT) or the server ends the stream; a connection
    that breaks is resumed up to ``reconnect`` times (the audio no final covers is sent again)."""
    import signal

    sd, info = open_input(RATE, device)
    print(f"speechpipe: listening on {info['name']!r}; Ctrl-C to stop", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        return await stream_pcm(
            url,
            Start(sample_rate=RATE),
            mic_frames(sd, device, stop),
            token=token,
            on_message=LinePrinter(),
            reconnect=reconnect,
        )
    finally:
        loop.remove_signal_handler(signal.SIGINT)
