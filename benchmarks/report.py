"""The report: per-workload rows in the reported units, rendered as markdown and JSON.

The ratio is freshproc's median ÷ the best peer's median, both from this run. Whether a
ratio is good depends on the unit: below 1 is better for times and memory (lower is
better), above 1 for rates (higher is better). Timings are reported, never asserted.

With a baseline, each freshproc row is followed by its "[baseline]" row, and the current
row also gets current ÷ baseline (medians, same run), read the same way.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.contenders import Entry
from benchmarks.jobs import Outcome
from benchmarks.stats import Summary, fmt, summarize
from benchmarks.workloads import Plan, Workload


@dataclass(frozen=True)
class Row:
    entry: Entry
    values: list[float]
    notes: list[str]
    extras: dict[str, list[float]]
    summary: Summary | None
    #: Why there are no values ("n/a (reason)" in the table).
    reason: str | None
    ratio: float | None = None
    #: This (current) row's median ÷ its baseline row's median.
    ratio_to_baseline: float | None = None

    @property
    def is_baseline(self) -> bool:
        return self.entry.baseline_of is not None


@dataclass(frozen=True)
class Section:
    workload: Workload
    plan: Plan
    rows: list[Row]

    def _best(self, family: str) -> Row | None:
        rows = [
            row
            for row in self.rows
            if row.entry.family == family
            and row.summary is not None
            and not row.is_baseline
            and not row.entry.reference
        ]
        if not rows:
            return None
        pick = max if self.workload.higher_is_better else min
        return pick(rows, key=lambda row: row.summary.median if row.summary else 0.0)

    @property
    def best_freshproc(self) -> Row | None:
        return self._best("freshproc")

    @property
    def best_peer(self) -> Row | None:
        return self._best("peer")

    @property
    def raw_rows(self) -> list[Row]:
        return [row for row in self.rows if row.entry.family == "raw"]


def build_section(workload: Workload, plan: Plan, entries: Iterable[Entry], outcomes: Mapping[str, Outcome]) -> Section:
    """Rows for ``entries`` (freshproc first, then peers, then raw), with ratios."""
    rows: list[Row] = []
    for entry in entries:
        outcome = outcomes[entry.name]
        values = [workload.display(sample, plan) for sample in outcome.samples]
        notes = list(outcome.notes)
        notes += [f"{name}: {fmt(statistics.median(extra))}" for name, extra in outcome.extras.items()]
        if values and outcome.failure:
            notes.append(outcome.failure)
        reason = None if values else (outcome.failure or "no samples")
        rows.append(Row(entry, values, notes, outcome.extras, summarize(values) if values else None, reason))
    section = Section(workload, plan, rows)
    peer = section.best_peer
    if peer is not None and peer.summary is not None and peer.summary.median > 0:
        base = peer.summary.median
        section.rows[:] = [
            dataclasses.replace(row, ratio=row.summary.median / base)
            if row.entry.family == "freshproc" and row.summary is not None
            else row
            for row in rows
        ]
    baselines = {row.entry.baseline_of: row.summary.median for row in section.rows if row.is_baseline and row.summary}
    section.rows[:] = [
        dataclasses.replace(row, ratio_to_baseline=row.summary.median / baselines[row.entry.name])
        if row.summary is not None and baselines.get(row.entry.name)
        else row
        for row in section.rows
    ]
    return section


def _cell(row: Row | None) -> str:
    if row is None or row.summary is None:
        return "n/a"
    return f"{fmt(row.summary.median)} ({row.entry.label})"


def _ratio(row: Row | None) -> str:
    return f"{row.ratio:.2f}" if row is not None and row.ratio is not None else "n/a"


def _ratio_to_baseline(row: Row | None) -> str:
    return f"{row.ratio_to_baseline:.2f}" if row is not None and row.ratio_to_baseline is not None else "n/a"


def markdown(sections: Sequence[Section], meta: Mapping[str, Any]) -> str:
    baseline = meta.get("baseline")
    lines = [
        "# freshproc benchmarks",
        "",
        (
            f"Python {meta['python']} on {meta['platform']}, {meta['cpus']} CPUs; {meta['rounds']} round(s), "
            f"{'quick' if meta['quick'] else 'full'} run, {meta['wall_seconds']:.0f} s wall time; {meta['date']}; "
            f"freshproc at {meta['freshproc_revision']}."
        ),
        *(
            ["", "**Warning: freshproc's source changed during this run; its rows mix versions.**"]
            if meta["freshproc_changed_during_run"]
            else []
        ),
        "",
        "Every pool has 2 workers. Each job (one contender on one workload) ran in its own fresh interpreter;",
        "rounds were interleaved. Values are medians over all samples of all rounds.",
        "Ratio = freshproc median ÷ best peer median from this run: for *lower is better* a ratio below 1",
        "favors freshproc, for *higher is better* a ratio above 1 does.",
        *(_baseline_intro(baseline) if baseline else []),
        "",
        "## Summary",
        "",
        "| Workload | Unit | Better | freshproc (best variant) | Best peer | Ratio freshproc ÷ best peer | Raw limit |"
        + (" Current ÷ baseline (best variant) |" if baseline else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if baseline else ""),
    ]
    for section in sections:
        workload = section.workload
        freshproc_row = section.best_freshproc
        raws = "; ".join(_cell(row) for row in section.raw_rows) or "n/a"
        lines.append(
            f"| {workload.key}. {workload.heading(section.plan)} | {workload.unit} | {workload.better} | {_cell(freshproc_row)} "
            f"| {_cell(section.best_peer)} | {_ratio(freshproc_row)} | {raws} |"
            + (f" {_ratio_to_baseline(freshproc_row)} |" if baseline else "")
        )
    for section in sections:
        lines += ["", *_section_markdown(section, with_baseline=bool(baseline))]
    return "\n".join(lines) + "\n"


def _baseline_intro(baseline: Mapping[str, Any]) -> list[str]:
    source = f"`--baseline-ref {baseline['ref']}`" if baseline["ref"] else "`--baseline`"
    return [
        f"Rows marked [baseline] ran freshproc at {baseline['revision']} ({source}) in the same interleaved run.",
        "Current ÷ baseline = a freshproc row's median ÷ its [baseline] row's median: for *lower is better*",
        "a ratio below 1 means the current code does better, for *higher is better* a ratio above 1 does.",
        *(
            ["", "**Warning: the baseline's source changed during this run; its rows mix versions.**"]
            if baseline["changed_during_run"]
            else []
        ),
    ]


def _section_markdown(section: Section, *, with_baseline: bool) -> list[str]:
    workload = section.workload
    lines = [
        f"## {workload.key}. {workload.heading(section.plan)}",
        "",
        f"{workload.measures} Unit: {workload.unit} ({workload.better} is better); {workload.formula}.",
        "",
        "| Contender | Median | p10-p90 | n | Ratio ÷ best peer |"
        + (" Current ÷ baseline |" if with_baseline else "")
        + " Notes |",
        "|---|---|---|---|---|" + ("---|" if with_baseline else "") + "---|",
    ]
    for row in section.rows:
        notes = "; ".join(row.notes).replace("|", "/")
        to_baseline = ""
        if with_baseline and row.entry.family == "freshproc" and not row.is_baseline:
            to_baseline = f" {_ratio_to_baseline(row)} |"
        elif with_baseline:
            to_baseline = " |"
        if row.summary is None:
            lines.append(f"| {row.entry.label} | n/a ({row.reason}) | | | |{to_baseline} {notes} |")
            continue
        summary = row.summary
        lines.append(
            f"| {row.entry.label} | {fmt(summary.median)} | {fmt(summary.p10)}-{fmt(summary.p90)} | {summary.n} "
            f"| {_ratio(row) if row.entry.family == 'freshproc' else ''} |{to_baseline} {notes} |"
        )
    return lines


def to_json(sections: Sequence[Section], meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "meta": dict(meta),
        "workloads": {section.workload.key: _section_json(section) for section in sections},
    }


def _section_json(section: Section) -> dict[str, Any]:
    workload = section.workload
    freshproc_row, peer_row = section.best_freshproc, section.best_peer
    return {
        "title": workload.heading(section.plan),
        "measures": workload.measures,
        "unit": workload.unit,
        "better": workload.better,
        "formula": workload.formula,
        "plan": section.plan.to_json(),
        "best_freshproc": freshproc_row.entry.name if freshproc_row else None,
        "best_peer": peer_row.entry.name if peer_row else None,
        "ratio": freshproc_row.ratio if freshproc_row else None,
        "ratio_to_baseline": freshproc_row.ratio_to_baseline if freshproc_row else None,
        "contenders": [_row_json(row) for row in section.rows],
    }


def _row_json(row: Row) -> dict[str, Any]:
    summary = row.summary
    return {
        "name": row.entry.name,
        "label": row.entry.label,
        "family": row.entry.family,
        "baseline_of": row.entry.baseline_of,
        "status": "ok" if summary is not None else "n/a",
        "reason": row.reason,
        "median": summary.median if summary else None,
        "p10": summary.p10 if summary else None,
        "p90": summary.p90 if summary else None,
        "n": summary.n if summary else 0,
        "ratio": row.ratio,
        "ratio_to_baseline": row.ratio_to_baseline,
        "notes": row.notes,
        "extras": row.extras,
        "values": row.values,
    }
