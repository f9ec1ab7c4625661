"""The figures of a run as Markdown, and the environment they were measured in."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any, Final

from benchmarks.harness import Row, Unit

__all__ = ["load", "render", "versions"]


def _format_number(value: float, unit: Unit) -> str:
    if unit == "B":
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render(result: dict[str, Any]) -> str:
    """The figures of a run as Markdown: one table per scenario, then the targets."""
    lines: list[str] = []
    env = result["environment"]
    lines.append(f"`{result['command']}`")
    lines.append("")
    lines.append(
        f"Python {env['python']} on {env['platform']}, {env['cpus']} CPUs; "
        + ", ".join(f"{name} {version}" for name, version in env["versions"].items())
        + f"; load average {env['load_before']} before, {env['load_after']} after; "
        f"{result['repeat']} repetitions, median; {result['seconds']:.0f} s in all."
    )
    lines.extend(f"- {note}" for note in result["notes"])
    rows = [Row(**{k: v for k, v in row.items() if k in _ROW_FIELDS}) for row in result["rows"]]
    seen: list[str] = []
    for group in result["groups"]:
        scenario = group["scenario"]
        if scenario in seen:
            continue
        seen.append(scenario)
        unit: Unit = group["unit"]
        lines.append("")
        lines.append(f"### {group['title']}")
        lines.append("")
        lines.append(group["meaning"])
        lines.append("")
        if unit == "us":
            lines.append("| loop | pattern | µs/call | calls/s | min-max µs | ratio |")
            lines.append("|---|---|---:|---:|---:|---:|")
        else:
            lines.append("| loop | pattern | bytes/call | min-max bytes | ratio |")
            lines.append("|---|---|---:|---:|---:|")
        for row in rows:
            if row.scenario != scenario:
                continue
            spread = (
                f"{_format_number(min(row.samples), unit)}-{_format_number(max(row.samples), unit)}"
            )
            ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
            name = f"**{row.pattern}**" if row.role == "activity" else row.pattern
            labels = [
                label
                for label, has in (("reference", row.role == "reference"), ("naive", row.naive))
                if has
            ]
            if labels:
                name += f" ({', '.join(labels)})"
            cells = [row.loop, name, _format_number(row.median, unit)]
            if unit == "us":
                per_second = row.per_second
                cells.append("" if per_second is None else f"{per_second:,.0f}")
            cells += [spread, ratio]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if scenario.startswith("scaling"):
            lines.append("Ratio: to the same pattern at the smallest size, on the same loop.")
        else:
            lines.append(_ratio_note([r for r in rows if r.scenario == scenario]))
    if result["targets"]:
        lines.append("")
        lines.append("### Targets")
        lines.append("")
        lines.append("| goal | loop | measured | limit | met | against | floor |")
        lines.append("|---|---|---:|---:|:---:|---|---:|")
        for target in result["targets"]:
            if "bytes" in target["goal"]:
                value, limit = f"{target['value']:,.0f} B", f"{target['limit']:,.0f} B"
            else:
                value, limit = f"{target['value']:.2f}x", f"{target['limit']:g}x"
            met = "yes" if target["met"] else "**no**"
            floor = target.get("floor")
            floor_text = "" if floor is None else f"{floor:.2f}x"
            against = target.get("against") or ""
            lines.append(
                f"| {target['goal']} | {target['loop']} | {value} | {limit} | {met} "
                f"| {against} | {floor_text} |"
            )
        lines.append("")
        lines.append(
            "Against: the row activity is compared with, the strongest of its kind in this "
            "run (the fastest baseline, the fastest aiojobs pattern, the fastest reference). "
            "Each ratio is paired, as in the tables, except the growth of µs per call with "
            "the backlog, which compares the medians of one pattern at its sizes."
        )
        lines.append("")
        lines.append(
            "Floor: the same ratio with the scenario's reference row in activity's place, "
            "a pattern that does only what the goal's semantics need (an await in its own "
            "context copy; one thread fed by a queue; a trio task in a cancel scope of its "
            "own). Where the floor misses the limit, no implementation with those semantics "
            "meets it in this run."
        )
    return "\n".join(lines) + "\n"


def _ratio_note(rows: list[Row]) -> str:
    """What the ratio column of a scenario's table is taken against."""
    per_loop = dict.fromkeys((row.loop, row.baseline) for row in rows)
    names = dict.fromkeys(baseline for _, baseline in per_loop)
    loops = [row.loop for row in rows if row.role == "baseline"]
    if len(loops) > len(set(loops)):
        lead = "the strongest baseline of the same loop in the same run (its fastest baseline row)"
    else:
        lead = "the baseline of the same loop in the same run"
    if len(names) == 1:
        note = f"Ratio: to *{next(iter(names))}*, {lead}."
    else:
        note = f"Ratio: to {lead}: " + ", ".join(f"*{b}* on {loop}" for loop, b in per_loop) + "."
    if not rows[0].scenario.startswith("scaling"):
        note += (
            " Paired: the median of the repetitions' own ratios, each of two samples"
            " run a moment apart."
        )
    return note


_ROW_FIELDS: Final = frozenset(
    {
        "scenario",
        "loop",
        "pattern",
        "role",
        "calls",
        "unit",
        "samples",
        "baseline",
        "ratio",
        "naive",
    }
)


def versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in ("activity", "anyio", "aiojobs", "uvloop", "trio"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:  # pragma: no cover - no load average on this platform
        return "unknown"
