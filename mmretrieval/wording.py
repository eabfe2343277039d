"""Counts in words for the messages of every layer: "1 image", "2 images", "1 copy", "3 copies"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun`` in the right number: "1 result", "2 results", "1 copy", "3 copies" (``plural``)."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def per_second(count: int, seconds: float) -> str:
    """A rate for a summary line: "52,151/s", "3.4/s" (a slow or tiny run read "0/s"), "-/s" with no time."""
    if seconds <= 0:
        return "-/s"
    rate = count / seconds
    return f"{rate:,.0f}/s" if rate >= 10 else f"{rate:.1f}/s"
