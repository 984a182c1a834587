"""Packing speech into Whisper windows: the one place that decides which pieces share a call.

Whisper pays a full encoder pass per call whatever the audio length, so pieces of speech are
packed into windows of at most ``window_s`` seconds, ``gap_s`` of silence between them. Three
users share these rules: the engine (which pieces of one job go in one window,
:func:`pack_windows`), the offline session (which closed segments to release as jobs now,
:func:`release_groups`) and the live scheduler (what one call can still take, :class:`WindowFill`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def pack_windows(durations: list[float], window_s: float, gap_s: float) -> list[list[int]]:
    """First-fit-decreasing bin packing of pieces into Whisper windows.

    Whisper pays a full encoder pass per window whatever its fill, so the number of windows is
    what costs. Pieces are placed longest first into the first window with room (``gap_s`` of
    silence between pieces); a piece longer than ``window_s`` gets a window of its own. Returns the
    piece indices of each window in their original (stream) order, windows ordered by their
    first piece.
    """
    bins: list[tuple[float, list[int]]] = []
    for i in sorted(range(len(durations)), key=lambda k: -durations[k]):
        d = durations[i]
        for b, (fill, members) in enumerate(bins):
            if fill + gap_s + d <= window_s:
                bins[b] = (fill + gap_s + d, members + [i])
                break
        else:
            bins.append((d, [i]))
    groups = [sorted(members) for _fill, members in bins]
    return sorted(groups, key=lambda g: g[0])


def pack_items(items: Sequence[T], durations: Sequence[float], window_s: float, gap_s: float) -> list[list[T]]:
    """:func:`pack_windows` over ``items`` themselves: each window's items in their original order."""
    return [[items[i] for i in g] for g in pack_windows(list(durations), window_s, gap_s)]


def release_groups(
    durations: Sequence[float], window_s: float, gap_s: float, lookahead_s: float, finished: bool
) -> tuple[list[list[int]], list[int]]:
    """Which waiting pieces to pack into jobs now, and which to keep waiting for company.

    Offline, closed segments wait until ``lookahead_s`` of audio has gathered (or the stream
    ended), then go out packed into as few windows as possible; the least-filled window keeps
    waiting for more segments unless the stream is over. Returns the windows to release (piece
    indices, see :func:`pack_windows`) and the indices kept back.
    """
    if not durations or (not finished and sum(durations) < lookahead_s):
        return [], list(range(len(durations)))
    groups = pack_windows(list(durations), window_s, gap_s)
    if finished or len(groups) == 1:
        return groups, []
    fill = [sum(durations[i] for i in g) for g in groups]
    keep = groups.pop(fill.index(min(fill)))
    return groups, keep


class WindowFill:
    """One Whisper window being filled: pieces of audio placed one after another, ``gap_s`` apart.

    The first piece always fits (a piece longer than the window goes alone); the next one fits
    when it and its gap still end within ``window_s``.
    """

    def __init__(self, window_s: float, gap_s: float) -> None:
        self.window_s = window_s
        self.gap_s = gap_s
        self.used = 0.0
        self.pieces = 0

    def fits(self, duration_s: float) -> bool:
        return self.pieces == 0 or self.used + self.gap_s + duration_s <= self.window_s

    def add(self, duration_s: float) -> None:
        self.used += duration_s + (self.gap_s if self.pieces else 0.0)
        self.pieces += 1

    @property
    def room_s(self) -> float:
        """Audio one more piece could have after a gap (negative when not even the gap fits)."""
        return self.window_s - self.used - self.gap_s
