"""What ``dicomhub import`` tells: its counts (kept by the sending threads), a progress bar on
a terminal (one line per step otherwise, for logs), and the summary at the end."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from dicomhub.clients.common import bar
from dicomhub.clients.sources import Item
from dicomhub.clients.stow import DUPLICATE, STORED, Outcome

LISTED = 10  # names shown per reason; past that the full list goes to a file
PLAIN_EVERY = 10.0  # seconds between plain progress lines, at most


@dataclass
class Tally:
    total_files: int
    total_bytes: int
    files: int = 0  # read: sent or skipped
    bytes: int = 0
    stored: int = 0
    duplicates: int = 0
    resumed: int = 0  # acknowledged by an earlier run, not read again
    interrupted: bool = False
    warned: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    refused: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    skipped: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def skip(self, item: Item, why: str) -> None:
        with self.lock:
            self.files += 1
            self.bytes += item.size
            self.skipped[why].append(item.name)

    def record(self, items: list[Item], outcomes: list[Outcome]) -> None:
        with self.lock:
            for item, outcome in zip(items, outcomes, strict=True):
                self.files += 1
                self.bytes += item.size
                if outcome.kind == STORED:
                    self.stored += 1
                    if outcome.reason:
                        self.warned[outcome.reason].append(item.name)
                elif outcome.kind == DUPLICATE:
                    self.duplicates += 1
                else:
                    self.refused[outcome.reason or "refused"].append(item.name)

    @property
    def answered(self) -> int:
        return self.stored + self.duplicates + _count(self.refused)

    def rates(self) -> tuple[float, float, float | None]:
        """Instances answered per second, seconds so far, and seconds left (by bytes)."""
        seconds = max(time.monotonic() - self.started, 1e-6)
        left = None
        if self.bytes:
            left = (self.total_bytes - self.bytes) * seconds / self.bytes
        return self.answered / seconds, seconds, left


class Progress:
    """A bar redrawn in place on a terminal; otherwise a line per twentieth of the files (or
    every ten seconds), so that a log shows the import moving without filling up."""

    def __init__(self, out: TextIO, tally: Tally):
        self.out, self.tally = out, tally
        self.tty = out.isatty()
        self.step = max(1, tally.total_files // 20)
        self.next_files, self.next_time = self.step, time.monotonic() + PLAIN_EVERY
        self.drawn = False

    def draw(self) -> None:
        t = self.tally
        if self.tty:
            self.out.write(f"\r{self.line()}\x1b[K")
        elif t.files >= self.next_files or time.monotonic() >= self.next_time:
            self.next_files = t.files + self.step
            self.next_time = time.monotonic() + PLAIN_EVERY
            self.out.write(f"import: {self.line()}\n")
        else:
            return
        self.out.flush()
        self.drawn = True

    def line(self) -> str:
        t = self.tally
        rate, _, left = t.rates()
        fraction = t.bytes / t.total_bytes if t.total_bytes else 1.0
        eta = "--:--" if left is None else _clock(left)
        return (
            f"{bar(fraction)} {t.files:,}/{t.total_files:,} files  "
            f"{t.bytes / 1e6:,.1f}/{t.total_bytes / 1e6:,.1f} MB  {rate:,.0f} instances/s  "
            f"ETA {eta}"
        )

    def end(self) -> None:
        if self.tty and self.drawn:
            self.out.write("\n")
            self.out.flush()


def write_summary(tally: Tally, state: Path, kept: bool, out: TextIO) -> None:
    """The counts, then why files were refused or skipped (all of them in a file next to the
    state when there are many)."""
    rate, seconds, _ = tally.rates()
    warned = _count(tally.warned)
    kept = kept and state.exists()  # nothing acknowledged yet: nothing to resume from
    lines = [
        ("stored", f"{tally.stored}" + (f" ({warned} with warnings)" if warned else "")),
        ("duplicates", tally.duplicates),
        ("refused", _count(tally.refused)),
        ("skipped", f"{_count(tally.skipped)} (not DICOM instances)"),
        ("resumed", f"{tally.resumed} (acknowledged by an earlier run, not sent again)"),
        ("MB", f"{tally.bytes / 1e6:.1f}"),
        ("seconds", f"{seconds:.1f}"),
        ("instances/s", f"{rate:.1f}"),
        ("state", f"{state} (kept: run the same command again to resume)" if kept else "-"),
    ]
    for name, value in lines:
        print(f"{name:<12}{value}", file=out)
    listing = state.with_suffix(".txt")
    long = False
    for title, groups in _lists(tally):
        for reason, names in sorted(groups.items()):
            print(f"{title}: {reason}: {len(names)} file(s)", file=out)
            for name in sorted(names)[:LISTED]:
                print(f"  {name}", file=out)
            if len(names) > LISTED:
                print(f"  ... and {len(names) - LISTED} more, listed in {listing}", file=out)
                long = True
    if long:
        _write_listing(tally, listing)


def _write_listing(tally: Tally, path: Path) -> None:
    with open(path, "w") as f:
        for title, groups in _lists(tally):
            for reason, names in sorted(groups.items()):
                f.writelines(f"{title}\t{reason}\t{name}\n" for name in sorted(names))


def _lists(tally: Tally) -> tuple[tuple[str, dict[str, list[str]]], ...]:
    return (("refused", tally.refused), ("warning", tally.warned), ("skipped", tally.skipped))


def _count(groups: dict[str, list[str]]) -> int:
    return sum(len(names) for names in groups.values())


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
