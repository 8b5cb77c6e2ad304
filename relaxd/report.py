"""Session reports for the therapist: one PNG picture and one CSV table per session.

``relaxd report SESSION`` and the panel both call ``render_session_report``. The report is
built only from the numbers in the session store (affect shares, stimulus levels, events,
alerts); the store holds no images, so no report can show the child.

Decisions made here:

* **One row per second** in the CSV, from second 0 to the last second that has any record
  (affect, stimulus, an event or an alert), so seconds without readings show up as empty
  rows instead of vanishing. The columns are the store's export columns
  (``relaxd.store.CSV_COLUMNS``), so a report and ``export_session`` read alike.
* **An empty session still gets a report**: a picture with the title and the words "no
  data recorded", and a CSV with the header only. The panel can then always show a
  picture, and the therapist sees at once that nothing was recorded.
* **No pyplot**: the figure is a plain ``matplotlib.figure.Figure`` drawn by the Agg
  canvas, so no display, no global backend switch and no pyplot state shared with
  whichever process (panel, CLI) renders it.
* Files are written under a temporary name and renamed, so a panel showing the picture
  never reads a half-written file.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from relaxd.errors import RelaxdError
from relaxd.store import (CSV_COLUMNS, RecordNotFoundError, SessionStore, StoreError, describe_end_reason,
                          local_time)
from relaxd.vocabulary import GROUPS

LATEST = "latest"
FIGURE_SIZE_IN = (12.0, 8.0)
FIGURE_DPI = 100  # so the PNG is 1200 x 800 pixels
CSV_DECIMALS = 4  # shares and levels are 0..1; more digits are noise to a reader
LATEST_IDS_SHOWN = 5  # an unknown session id lists this many recent ones

GROUP_COLOURS = {"negative": "#e06666", "neutral": "#a7bfd8", "positive": "#6aa84f"}
NO_FACE_COLOUR = "#d9d9d9"
NO_DATA_COLOUR = "#ffffff"
STIMULUS_COLOURS = {"light": "#e1a800", "sound": "#3d85c6", "vibration": "#8e7cc3"}
SAFETY_COLOUR = "#c62828"
STATE_COLOUR = "#1f4e9c"
ALERT_COLOUR = "#e65100"

# Short labels for the event lane; intensity steps are drawn as markers, not labels.
EVENT_LABELS = {
    "started": "start",
    "calibrated": "calibrated",
    "paused": "paused",
    "resumed": "resumed",
    "child_left": "child left",
    "adverse_reaction": "HALT",
    "stopped": "stopped",
    "scenario_finished": "finished",
    "estop": "E-STOP",
    "estop_reset": "e-stop reset",
    "fault": "FAULT",
    "fault_cleared": "fault cleared",
}
QUIET_EVENTS = frozenset({"scenario_ended"})  # in the table, not on the picture
SAFETY_EVENTS = frozenset({"child_left", "adverse_reaction", "estop", "fault"})
INTENSITY_EVENTS = {"intensity_raised": ("^", "#38761d"), "intensity_lowered": ("v", "#b45f06")}


class ReportError(RelaxdError):
    """A session report cannot be made: a bad session argument or an unwritable folder."""


class UnknownSessionError(ReportError):
    """The session asked for is not in the store."""


@dataclass(frozen=True)
class Mark:
    """One labelled mark on the time axis: an event or an alert."""

    second: int
    label: str
    colour: str


# ---------------------------------------------------------------------------------------
# Finding the session


def resolve_session(store: SessionStore, spec: str | int) -> int:
    """Turn ``SESSION`` from the command line (an id or ``latest``) into a known session id."""
    if isinstance(spec, str) and spec.strip().lower() == LATEST:
        newest = store.list_sessions(limit=1)
        if not newest:
            raise UnknownSessionError(f"the session store {store.path} has no sessions yet: run a session first")
        return newest[0].id
    try:
        session_id = int(spec)
    except (TypeError, ValueError):
        raise ReportError(f"SESSION must be a session id (a whole number) or '{LATEST}', got {spec!r}") from None
    if not 0 < session_id < 2**63:  # SQLite's integer range; a bigger number cannot be a session
        raise UnknownSessionError(_unknown_session_message(store, session_id))
    try:
        store.get_session(session_id)
    except RecordNotFoundError:
        raise UnknownSessionError(_unknown_session_message(store, session_id)) from None
    return session_id


def _unknown_session_message(store: SessionStore, session_id: int) -> str:
    recent = store.list_sessions(limit=LATEST_IDS_SHOWN)
    if not recent:
        return f"no session {session_id}: the session store {store.path} has no sessions yet"
    listed = ", ".join(f"{s.id} ({local_time(s.started_at)})" for s in recent)
    return f"no session {session_id} in {store.path}; the latest are: {listed}. Give one of these or '{LATEST}'"


# ---------------------------------------------------------------------------------------
# The per-second table


def _second_of(stamp: str, start: datetime) -> int:
    """Seconds from the session start, as the store's export counts them (never negative)."""
    return max(0, int((datetime.fromisoformat(stamp) - start).total_seconds()))


def _describe_event(event: dict[str, Any]) -> str:
    text = event["kind"]
    if event.get("to_state") and event.get("from_state") != event["to_state"]:
        text += f" {event['from_state']}->{event['to_state']}"
    if event.get("reason"):
        text += f": {event['reason']}"
    return text


def per_second_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per second (``CSV_COLUMNS`` keys) from 0 to the last recorded second.

    ``data`` is ``SessionStore.session_data``. Seconds without a record keep their
    columns empty (None); ``events`` and ``alerts`` are lists of short descriptions.
    """
    start = datetime.fromisoformat(data["session"]["started_at"])
    events = [(_second_of(e["time"], start), _describe_event(e)) for e in data["events"]]
    alerts = [(_second_of(a["time"], start), f"{a['priority']}:{a['kind']}") for a in data["alerts"]]
    seconds = [a["second"] for a in data["affect"]] + [s["second"] for s in data["stimulus"]]
    seconds += [second for second, _ in events + alerts]
    if not seconds:
        return []
    rows = [{**dict.fromkeys(CSV_COLUMNS), "second": s, "events": [], "alerts": []} for s in range(max(seconds) + 1)]
    for affect in data["affect"]:
        rows[affect["second"]].update({k: v for k, v in affect.items() if k in CSV_COLUMNS})
    for stimulus in data["stimulus"]:
        rows[stimulus["second"]].update({k: v for k, v in stimulus.items() if k in CSV_COLUMNS})
    for second, text in events:
        rows[second]["events"].append(text)
    for second, text in alerts:
        rows[second]["alerts"].append(text)
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The per-second table as CSV; several events of one second are joined with '; '."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            values = {k: round(v, CSV_DECIMALS) if isinstance(v, float) else v for k, v in row.items()}
            writer.writerow({**values, "events": "; ".join(row["events"]), "alerts": "; ".join(row["alerts"])})


# ---------------------------------------------------------------------------------------
# Title and marks


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def report_title(data: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """Three lines: who and what; when, how long and why it ended; who chose each scenario and why."""
    session = data["session"]
    who = data["profile"]["pseudonym"] if data["profile"] else "anonymous"
    if session["ended_at"]:
        seconds = (datetime.fromisoformat(session["ended_at"])
                   - datetime.fromisoformat(session["started_at"])).total_seconds()
        when = f"{local_time(session['started_at'])} to {local_time(session['ended_at'])} ({_duration(seconds)})"
        reason = describe_end_reason(session["end_reason"])
    else:
        when = f"from {local_time(session['started_at'])} ({_duration(len(rows))} recorded)"
        reason = "session not closed"
    return (f"Session {session['id']} · {who} · scenario {session['scenario']}\n"
            f"{when} · end: {reason}\n{scenario_story(data)}")


def scenario_story(data: dict[str, Any]) -> str:
    """Who chose each scenario and why, e.g. "calm-sea (learner: ...), at 02:10 to quiet-glow (negative 60%)"."""
    start = datetime.fromisoformat(data["session"]["started_at"])
    parts = []
    for event in data["events"]:
        detail = event.get("data") or {}
        if event["kind"] == "started" and detail.get("scenario"):
            why = f": {detail['why']}" if detail.get("why") else ""
            parts.append(f"{detail['scenario']} ({detail.get('chosen_by', 'operator')}{why})")
        elif event["kind"] == "scenario_switched":
            parts.append(f"at {_mmss(_second_of(event['time'], start))} to {detail.get('to')} "
                         f"(negative {100 * float(detail.get('negative_share', 0)):.0f}%: {detail.get('why', '')})")
    return "scenarios: " + ", ".join(parts) if parts else "scenarios: as started"


def affect_summary(rows: Sequence[dict[str, Any]]) -> str:
    """How the recorded seconds split between the dominant groups, e.g. 'negative 12% · ...'."""
    counts = {g: 0 for g in (*GROUPS, "none")}
    for row in rows:
        if row["dominant_group"] in counts:
            counts[row["dominant_group"]] += 1
    total = sum(counts.values())
    if not total:
        return "no affect recorded"
    names = {"none": "no face"}
    return " · ".join(f"{names.get(g, g)} {100 * n / total:.0f}%" for g, n in counts.items())


def event_marks(data: dict[str, Any]) -> list[Mark]:
    """Labelled marks for state changes, safety events and alerts, one per second and colour."""
    start = datetime.fromisoformat(data["session"]["started_at"])
    marks: dict[tuple[int, str], list[str]] = {}
    for event in data["events"]:
        if event["kind"] in INTENSITY_EVENTS or event["kind"] in QUIET_EVENTS:
            continue
        colour = SAFETY_COLOUR if event["kind"] in SAFETY_EVENTS else STATE_COLOUR
        label = EVENT_LABELS.get(event["kind"], event["kind"])
        if event["kind"] == "scenario_switched":
            label = f"to {(event.get('data') or {}).get('to')}"
        marks.setdefault((_second_of(event["time"], start), colour), []).append(label)
    for alert in data["alerts"]:
        label = "alert: " + alert["kind"].replace("_", " ")
        marks.setdefault((_second_of(alert["time"], start), ALERT_COLOUR), []).append(label)
    return [Mark(second, " + ".join(dict.fromkeys(labels)), colour)
            for (second, colour), labels in sorted(marks.items())]


# ---------------------------------------------------------------------------------------
# The picture


def _mmss(seconds: float, _pos: Any = None) -> str:
    sign = "-" if seconds < 0 else ""
    minutes, secs = divmod(int(abs(seconds)), 60)
    return f"{sign}{minutes}:{secs:02d}"


def _tick_step(span_s: float) -> int:
    """Seconds between time ticks: a round step giving at most about 12 ticks."""
    steps = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
    return next((step for step in steps if span_s / step <= 12), steps[-1])


def _series(rows: Sequence[dict[str, Any]], key: str) -> Any:
    """A column as floats, NaN where the second has no value (so lines break there)."""
    import numpy as np

    return np.array([np.nan if row[key] is None else float(row[key]) for row in rows])


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """(first, last) index of each run of True."""
    runs: list[tuple[int, int]] = []
    for index, flag in enumerate(flags):
        if flag and runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        elif flag:
            runs.append((index, index))
    return runs


def _place_labels(marks: Sequence[Mark], span_s: float, lanes: int = 4) -> list[tuple[int, bool]]:
    """(row, to the left) per label: rows so neighbours do not overlap (greedy, estimated widths).

    Labels near the right end go to the left of their line, so they are not cut off.
    """
    seconds_per_char = span_s / 190  # about 190 characters of 7.5 pt text across the axes
    ends = [float("-inf")] * lanes
    placed = []
    for mark in marks:
        width = (len(mark.label) + 2) * seconds_per_char
        left = mark.second + width > span_s
        begin = mark.second - width if left else mark.second
        free = [i for i in range(lanes) if ends[i] < begin]
        row = free[0] if free else min(range(lanes), key=ends.__getitem__)
        ends[row] = begin + width
        placed.append((row, left))
    return placed


def draw_report(data: dict[str, Any], rows: Sequence[dict[str, Any]]) -> Any:
    """The report as a matplotlib ``Figure`` (not yet saved)."""
    import numpy as np

    try:
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter, MultipleLocator
    except ImportError as exc:
        raise ReportError(f"session reports need matplotlib ({exc}): pip install 'relaxd[report]'") from exc

    fig = Figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI, layout="constrained")
    fig.suptitle(report_title(data, rows), fontsize=12)
    if not rows:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No data recorded for this session:\nno affect, stimulus, events or alerts.",
                ha="center", va="center", fontsize=16, transform=ax.transAxes)
        return fig

    band, affect, stimulus, lane = fig.subplots(
        4, 1, sharex=True, gridspec_kw={"height_ratios": [0.3, 3.0, 2.0, 1.3]})
    seconds = np.arange(len(rows))
    x_range = (-0.5, len(rows) - 0.5)

    # Dominant group per second as a coloured band.
    codes = {g: i for i, g in enumerate((*GROUPS, "none"))}
    band_colours = [*(GROUP_COLOURS[g] for g in GROUPS), NO_FACE_COLOUR, NO_DATA_COLOUR]
    index = np.array([codes.get(row["dominant_group"], len(codes)) for row in rows])
    band.imshow(index[np.newaxis, :], aspect="auto", interpolation="nearest", cmap=ListedColormap(band_colours),
                vmin=0, vmax=len(band_colours) - 1, extent=(*x_range, 0, 1))
    band.set_yticks([])
    band.set_ylabel("dominant", rotation=0, ha="right", va="center", fontsize=9)
    band.set_title(affect_summary(rows), fontsize=9, loc="left")

    # Group shares stacked, with confidence and face share on top.
    # Every value holds for its whole second: steps centred on the second, like the band's cells.
    shares = [np.nan_to_num(_series(rows, g)) for g in GROUPS]
    affect.stackplot(seconds, *shares, colors=[GROUP_COLOURS[g] for g in GROUPS], labels=GROUPS, alpha=0.9,
                     step="mid")
    # Seconds with no face in grey, whole seconds edge to edge like the band's cells (a
    # stepped fill_between leaves half a second white at each end of a run).
    for first, last in _runs([row["dominant_group"] == "none" for row in rows]):
        affect.axvspan(first - 0.5, last + 0.5, ymax=1.0 / 1.02, color=NO_FACE_COLOUR, linewidth=0)
    affect.plot(seconds, _series(rows, "confidence"), color="black", linewidth=1.0, label="confidence",
                drawstyle="steps-mid")
    affect.plot(seconds, _series(rows, "face_share"), color="#444444", linewidth=1.0, linestyle=":",
                label="face share", drawstyle="steps-mid")
    affect.set_ylim(0, 1.02)
    affect.set_ylabel("affect share")
    handles, labels = affect.get_legend_handles_labels()
    handles.append(Patch(facecolor=NO_FACE_COLOUR, edgecolor="#999999"))
    labels.append("no face")
    affect.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)

    # Stimulus levels, with intensity steps as markers along the top.
    for name, colour in STIMULUS_COLOURS.items():
        stimulus.step(seconds, _series(rows, name), where="mid", color=colour, linewidth=1.5, label=name)
    start = datetime.fromisoformat(data["session"]["started_at"])
    for kind, (marker, colour) in INTENSITY_EVENTS.items():
        at = [_second_of(e["time"], start) for e in data["events"] if e["kind"] == kind]
        if not at:  # an empty unclipped line would stretch the layout down to the figure's corner
            continue
        stimulus.plot(at, [1.06] * len(at), linestyle="none", marker=marker, color=colour, markersize=6,
                      label=kind.replace("_", " "), clip_on=False)
    stimulus.set_ylim(0, 1.1)
    stimulus.set_ylabel("stimulus level")
    stimulus.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)

    # Events and alerts: a vertical line through every panel, a short label in the lane.
    marks = event_marks(data)
    for mark, (row, left) in zip(marks, _place_labels(marks, len(rows))):
        for ax in (affect, stimulus, lane):
            ax.axvline(mark.second, color=mark.colour, linewidth=1.0, alpha=0.8)
        # On a white ground above the lines, so a neighbour's line never strikes a label through.
        lane.text(mark.second, 0.88 - 0.25 * row, f" {mark.label} ", color=mark.colour, fontsize=7.5,
                  va="center", ha="right" if left else "left", clip_on=True, zorder=3,
                  bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    lane.set_ylim(0, 1)
    lane.set_yticks([])
    lane.set_ylabel("events", rotation=0, ha="right", va="center", fontsize=9)
    lane.legend(handles=[Line2D([], [], color=c, label=t) for c, t in
                         ((STATE_COLOUR, "state change"), (SAFETY_COLOUR, "halt / e-stop / safety"),
                          (ALERT_COLOUR, "caregiver alert"))],
                loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    lane.set_xlim(*x_range)
    lane.xaxis.set_major_locator(MultipleLocator(_tick_step(len(rows))))
    lane.xaxis.set_major_formatter(FuncFormatter(_mmss))
    lane.set_xlabel("time since session start (min:s)")
    return fig


# ---------------------------------------------------------------------------------------
# Writing both files


def report_stem(data: dict[str, Any]) -> str:
    """``session-<id>-<pseudonym>``, the pseudonym reduced to characters safe in a file name."""
    pseudonym = data["profile"]["pseudonym"] if data["profile"] else "anonymous"
    safe = re.sub(r"[^\w-]+", "-", pseudonym).strip("-") or "profile"
    return f"session-{data['session']['id']}-{safe}"


def render_session_report(store: SessionStore, session_id: int, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``session-<id>-<pseudonym>.png`` and ``.csv`` into ``out_dir``; returns (png, csv).

    Raises ``UnknownSessionError`` for an id not in the store, ``ReportError`` when the
    folder cannot be written, ``StoreError`` when the store cannot be read.
    """
    try:
        data = store.session_data(session_id)
    except RecordNotFoundError:
        raise UnknownSessionError(_unknown_session_message(store, session_id)) from None
    rows = per_second_rows(data)
    folder = Path(out_dir).expanduser()
    png, table = folder / f"{report_stem(data)}.png", folder / f"{report_stem(data)}.csv"
    figure = draw_report(data, rows)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(png, lambda tmp: figure.savefig(tmp, format="png"))
        _write_atomically(table, lambda tmp: write_csv(rows, tmp))
    except OSError as exc:
        raise ReportError(f"cannot write the report into {folder} ({exc}): choose a writable folder with "
                          "--out-dir") from exc
    return png, table


def _write_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def open_store_for_report(path: str | Path, busy_timeout_s: float = 5.0) -> SessionStore:
    """Open an existing store; a missing file is an error here (opening would create an empty one)."""
    db = Path(path).expanduser()
    if not db.is_file():
        raise StoreError(f"no session store at {db}: give the right file with --db, or set store.path in the "
                         "config (the daemon creates the store on its first session)")
    return SessionStore(db, busy_timeout_s=busy_timeout_s)
