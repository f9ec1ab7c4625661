"""``activity top URL``: a live view of a running application's statistics endpoint.

The web integrations serve :class:`~activity.integrations.asgi.AppStatistics` as
JSON at their ``statistics_path``: the app activity's counters and those of each
open request. This module reads that document over plain HTTP with the standard
library (``top`` needs no HTTP client), and shows it as a table refreshed every
``--interval`` seconds, with rates per second computed from two successive
snapshots. ``rich`` (the ``cli`` extra) draws the table; ``--once --json``
needs nothing but the standard library.

The document is read loosely, so that a server newer or older than this client
still shows: a numeric figure this module does not know is shown all the same
(a ``waiting...`` count next to ``pending``; any other, such as wait and run
percentiles or nested mappings of them, in a second table), and a figure it
knows but the server lacks shows as a dash.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from . import __version__

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping

    from rich.console import RenderableType
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

__all__ = [
    "COUNTERS",
    "Entry",
    "FetchError",
    "Snapshot",
    "Watcher",
    "compute_rates",
    "fetch",
    "http_url",
    "parse_document",
    "printable",
    "render",
    "run_top",
    "watch",
]

#: The cumulative counters of an entry: each gets a rate per second.
COUNTERS: Final = ("accepted", "completed", "failed", "cancelled", "rejected")
#: The counters the table shows, in order, with their column headers; a figure whose
#: name starts with ``waiting`` goes right after ``pending``.
_SHOWN: Final = (
    ("pending", "pend"),
    ("running", "run"),
    ("completed", "ok"),
    ("failed", "fail"),
    ("cancelled", "cancel"),
    ("rejected", "rej"),
)
#: The rates the table shows, with their column headers.
_SHOWN_RATES: Final = (
    ("accepted", "in/s"),
    ("completed", "ok/s"),
    ("failed", "fail/s"),
    ("rejected", "rej/s"),
)
#: What the short headers stand for, said under the table.
_LEGEND: Final = (
    "pend: pending/max_pending  run: running/max_concurrency  ok: completed  rej: rejected  "
    "in/s: accepted per second (each /s is since the reading before)"
)
#: Figures the table shows in the columns above (the limits inside running and pending).
_KNOWN: Final = frozenset(
    {*(name for name, _ in _SHOWN), *COUNTERS, "max_concurrency", "max_pending"}
)
#: Fields of an entry that are not figures.
_LABELS: Final = frozenset({"name", "id", "partition"})
#: How deep the figures of an entry are looked for (``wait.p99`` is two levels).
_MAX_DEPTH: Final = 4
#: The most a statistics document may weigh.
_MAX_BYTES: Final = 32 * 1024 * 1024
_DASH: Final = "-"

Role = Literal["app", "request"]


class FetchError(Exception):
    """The statistics endpoint could not be read: unreachable, an HTTP error, or not the document.

    :param url: the endpoint
    :param problem: why, in a few words (``"connection refused"``)
    """

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"cannot read {url}: {problem}")
        self.url = url
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Entry:
    """One activity of the document: the app activity or an open request's."""

    role: Role
    name: str
    #: The activity's id, as served (``None`` if the server sent none).
    id: object
    partition: str | None
    #: Every numeric figure, nested mappings flattened to dotted names (``wait.p99``);
    #: ``None`` where the server sent ``null``.
    figures: Mapping[str, float | None]

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the same activity in two snapshots."""
        return (self.role, repr(self.id), self.name if self.id is None else "")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One reading of the endpoint."""

    url: str
    #: The document as served.
    document: Mapping[str, Any]
    #: The app activity first, then the open requests, in the server's order.
    entries: tuple[Entry, ...]
    #: When it was read: ``time.monotonic()`` (rates) and ``time.time()`` (display).
    taken_at: float
    wall_time: float = 0.0


def http_url(text: str) -> str:
    """Check a command-line URL: ``http://`` with a host (an ``argparse`` type).

    :raises argparse.ArgumentTypeError: for another scheme or no host
    """
    import argparse

    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "http":
        raise argparse.ArgumentTypeError(f"an http:// URL is needed, got {text!r}")
    if not parts.hostname:
        raise argparse.ArgumentTypeError(f"the URL names no host: {text!r}")
    try:
        parts.port  # noqa: B018  # raises for a port that is not one
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: {text!r}") from None
    return text


def fetch(url: str, timeout: float) -> Snapshot:
    """Read the statistics endpoint once.

    :param url: the endpoint, the application's ``statistics_path`` on its server
    :param timeout: seconds to wait for the server to connect and to answer
    :raises FetchError: saying why there is no snapshot
    """
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": f"activity-top/{__version__}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read(_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        hint = " (is this the application's statistics_path?)" if exc.code == 404 else ""
        raise FetchError(url, f"the server answered HTTP {exc.code} {exc.reason}{hint}") from None
    except urllib.error.URLError as exc:
        raise FetchError(url, _why(exc.reason, timeout)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(url, _why(exc, timeout)) from None
    except ValueError as exc:  # a URL that http.client cannot send
        raise FetchError(url, f"not a URL this client can read ({exc})") from None
    if len(body) > _MAX_BYTES:
        raise FetchError(url, f"the answer is larger than {_MAX_BYTES} bytes")
    try:
        document: object = json.loads(body)
    except json.JSONDecodeError as exc:
        raise FetchError(
            url, f"the answer is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise FetchError(url, "the answer is not JSON (not UTF-8 text)") from None
    except RecursionError:
        raise FetchError(url, "the answer is JSON nested too deep to read") from None
    return parse_document(url, document, taken_at=time.monotonic(), wall_time=time.time())


def _why(reason: object, timeout: float) -> str:
    """Say in a few words why a connection failed."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running, on this port?)"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, ConnectionResetError):
        return "the server reset the connection"
    if isinstance(reason, http.client.InvalidURL):
        return f"not a URL this client can read ({reason})"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(reason, http.client.HTTPException):
        return f"not an HTTP answer ({type(reason).__name__})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def parse_document(
    url: str, document: object, *, taken_at: float, wall_time: float = 0.0
) -> Snapshot:
    """Read a statistics document (``{"app": {...}, "children": [...]}``) loosely.

    Fields this module does not know are kept; figures it knows may be missing.

    :param url: where the document came from
    :param document: the parsed JSON
    :param taken_at: when it was read, on the ``time.monotonic()`` clock
    :param wall_time: when it was read, on the ``time.time()`` clock
    :raises FetchError: if it is not a statistics document
    """
    not_it = "the answer is JSON but not an activity statistics document"
    if not isinstance(document, dict):
        raise FetchError(url, f"{not_it} (not an object)")
    served: dict[str, Any] = document  # pyright: ignore[reportUnknownVariableType]
    app = served.get("app")
    if not isinstance(app, dict):
        raise FetchError(url, f"{not_it} (no 'app' object; is this the statistics_path?)")
    children = served.get("children", [])
    if not isinstance(children, list):
        raise FetchError(url, f"{not_it} ('children' is not a list)")
    entries = [_entry("app", app)]  # pyright: ignore[reportUnknownArgumentType]
    entries.extend(
        _entry("request", child)  # pyright: ignore[reportUnknownArgumentType]
        for child in children  # pyright: ignore[reportUnknownVariableType]
        if isinstance(child, dict)
    )
    return Snapshot(url, served, tuple(entries), taken_at, wall_time)


def _entry(role: Role, served: dict[str, Any]) -> Entry:
    figures: dict[str, float | None] = {}

    def walk(name: str, value: object, depth: int) -> None:
        if isinstance(value, bool):
            return
        if value is None or isinstance(value, int | float):
            figures[name] = value
        elif isinstance(value, dict) and depth < _MAX_DEPTH:
            for key, inner in cast("dict[object, object]", value).items():
                walk(f"{name}.{key}", inner, depth + 1)

    for key, value in served.items():
        if key not in _LABELS:
            walk(key, value, 1)
    partition = served.get("partition")
    return Entry(
        role=role,
        name=str(served.get("name", "?")),
        id=served.get("id"),
        partition=None if partition is None else str(partition),
        figures=figures,
    )


def compute_rates(
    previous: Snapshot | None, current: Snapshot
) -> dict[tuple[str, str, str], dict[str, float]]:
    """Per second, how much each counter of each activity grew between two snapshots.

    An activity that is not in both snapshots, or a counter that went down (the
    server restarted), has no rate.

    :return: by :attr:`Entry.key`, by counter name
    """
    if previous is None:
        return {}
    elapsed = current.taken_at - previous.taken_at
    if elapsed <= 0:
        return {}
    before = {entry.key: entry for entry in previous.entries}
    rates: dict[tuple[str, str, str], dict[str, float]] = {}
    for entry in current.entries:
        old = before.get(entry.key)
        if old is None:
            continue
        mine: dict[str, float] = {}
        for counter in COUNTERS:
            now, then = entry.figures.get(counter), old.figures.get(counter)
            if now is not None and then is not None and now >= then:
                mine[counter] = (now - then) / elapsed
        rates[entry.key] = mine
    return rates


# -- rendering --------------------------------------------------------------------------------


def render(
    current: Snapshot | None,
    previous: Snapshot | None = None,
    *,
    problem: FetchError | None = None,
    interval: float | None = None,
    failures: int = 0,
) -> RenderableType:
    """Draw a snapshot as a table, with the rates since ``previous``.

    :param current: the latest snapshot, if any was read
    :param previous: the one before, for the rates
    :param problem: why the latest reading failed, if it did
    :param interval: seconds between readings, said in the title (live view)
    :param failures: how many readings in a row have failed
    """
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = []
    if current is not None:
        when = time.strftime("%H:%M:%S", time.localtime(current.wall_time))
        requests = sum(1 for entry in current.entries if entry.role == "request")
        title = Text.assemble(
            ("activity top ", "bold"),
            current.url,
            f"  at {when}",
            f", every {interval:g} s" if interval is not None else "",
            f"  {requests} open request{'' if requests == 1 else 's'}",
        )
        parts.append(title)
    if problem is not None:
        retry = f"; retrying every {interval:g} s" if interval is not None else ""
        tries = f" ({failures} failed readings in a row)" if failures > 1 else ""
        parts.append(Text(f"{problem}{retry}{tries}", style="bold red"))
        if current is not None:
            parts.append(Text("the table below is the last snapshot read", style="red"))
    if current is None:
        if problem is None:
            parts.append(Text("no reading yet"))
        return Group(*parts)

    rates = compute_rates(previous, current)
    extra = _extra_figures(current.entries)
    waiting = [name for name in extra if name.startswith("waiting")]
    others = [name for name in extra if not name.startswith("waiting")]
    table = _table()
    headers = dict(_SHOWN)
    columns = ["pending", *waiting, *(name for name, _ in _SHOWN[1:])]
    for name in columns:
        table.add_column(headers.get(name) or _header(name), justify="right")
    for _, header in _SHOWN_RATES:
        table.add_column(header, justify="right")
    for entry in current.entries:
        figures = entry.figures
        cells: list[RenderableType] = [_label(entry)]
        for name in columns:
            limit = {"pending": "max_pending", "running": "max_concurrency"}.get(name)
            cells.append(_count(figures, name, limit))
        mine = rates.get(entry.key, {})
        cells.extend(_rate(mine.get(counter)) for counter, _ in _SHOWN_RATES)
        table.add_row(*cells, style="bold" if entry.role == "app" else None)
    parts.extend((table, Text(_LEGEND, style="dim")))
    if others:
        # Figures of a newer server (percentiles, ages...): a table of their own.
        more = _table()
        for name in others:
            more.add_column(_header(name), justify="right")
        for entry in current.entries:
            figures = entry.figures
            more.add_row(
                _label(entry),
                *(_figure(name, figures.get(name), name in figures) for name in others),
                style="bold" if entry.role == "app" else None,
            )
        parts.extend((Text(""), more))
    return Group(*parts)


def _table() -> Table:
    from rich.table import Table

    # A cell is a number or a name: where the terminal is too narrow, the names fold
    # and the headers wrap, while a number keeps its width (its one word).
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 0, 0, 1))
    table.add_column("activity", overflow="fold", min_width=12)
    return table


def _label(entry: Entry) -> Text:
    from rich.text import Text

    name = printable(entry.name)
    label = Text(name if entry.role == "app" else f"  {name}")
    if entry.id is not None:
        label.append(f" #{printable(str(entry.id))}", style="dim")
    if entry.partition is not None:
        label.append(f" [{printable(entry.partition)}]", style="dim")
    return label


def printable(text: str) -> str:
    """``text`` with its unprintable characters escaped (``\\x1b``).

    A request activity is named after the request's path, which the client
    chose: an escape sequence in it must not reach the terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _extra_figures(entries: tuple[Entry, ...]) -> list[str]:
    """The figures no column above shows, in the order they first appear."""
    names: dict[str, None] = {}
    for entry in entries:
        for name in entry.figures:
            if name not in _KNOWN:
                names.setdefault(name)
    return list(names)


def _header(name: str) -> Text:
    from rich.text import Text

    return Text(printable(name).replace("_", " "))


def _count(figures: Mapping[str, float | None], name: str, limit: str | None) -> str:
    value = figures.get(name)
    if value is None:
        return _DASH
    text = _number(value)
    bound = None if limit is None else figures.get(limit)
    return text if bound is None else f"{text}/{_number(bound)}"


def _rate(value: float | None) -> str:
    return _DASH if value is None else f"{value:.1f}"


def _figure(name: str, value: float | None, present: bool) -> str:
    if value is None:
        return _DASH if present else ""
    if name.endswith(("_s", "_seconds", ".seconds")) or _is_latency(name):
        return _duration(value)
    return _number(value)


def _is_latency(name: str) -> bool:
    """A percentile of ``ActivityStatistics.wait_time`` or ``run_time`` (seconds, not a count)."""
    group, _, figure = name.rpartition(".")
    return group in ("wait_time", "run_time") and figure != "count"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return str(seconds)
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if abs(seconds) < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


# -- the command ------------------------------------------------------------------------------


class Watcher:
    """Read the endpoint on demand and draw what it says, keeping the last good snapshot.

    :param url: the endpoint
    :param interval: seconds between readings, said in the view
    :param timeout: seconds each reading may take
    """

    def __init__(self, url: str, *, interval: float, timeout: float) -> None:
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.current: Snapshot | None = None
        self.previous: Snapshot | None = None
        self.problem: FetchError | None = None
        #: Readings that failed since the last good one.
        self.failures = 0

    def poll(self) -> RenderableType:
        """Read the endpoint once and return the view: the table, or why there is none."""
        try:
            snapshot = fetch(self.url, self.timeout)
        except FetchError as exc:
            self.problem = exc
            self.failures += 1
        else:
            self.previous, self.current = self.current, snapshot
            self.problem = None
            self.failures = 0
        return render(
            self.current,
            self.previous,
            problem=self.problem,
            interval=self.interval,
            failures=self.failures,
        )


def run_top(options: argparse.Namespace) -> int:
    """Run ``activity top``; return the exit code.

    0 when the user stops the live view (Ctrl-C) or ``--once`` read a snapshot, 1 when
    ``--once`` could not read one, 2 when ``rich`` is needed and missing.
    """
    url: str = options.url
    timeout: float = options.timeout
    if options.json:
        try:
            snapshot = fetch(url, timeout)
        except FetchError as exc:
            print(f"activity top: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({"url": url, **snapshot.document}, indent=2))
        return 0
    try:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text
    except ImportError:
        print(
            "activity top needs the 'rich' package to draw its table; install it with: "
            "pip install 'activity[cli]' (or use --once --json, which does not)",
            file=sys.stderr,
        )
        return 2
    console = Console()
    if options.once:
        try:
            snapshot = fetch(url, timeout)
        except FetchError as exc:
            print(f"activity top: {exc}", file=sys.stderr)
            return 1
        console.print(render(snapshot))
        return 0
    watcher = Watcher(url, interval=options.interval, timeout=timeout)
    live = Live(Text(f"reading {url} ..."), console=console, auto_refresh=False)
    return watch(watcher, live, time.sleep)


def watch(watcher: Watcher, live: Live, pause: Callable[[float], object]) -> int:
    """Redraw ``live`` with a fresh reading every interval, until Ctrl-C."""
    try:
        with live:
            while True:
                started = time.monotonic()
                live.update(watcher.poll(), refresh=True)
                pause(max(0.0, watcher.interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0
