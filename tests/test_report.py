"""Session reports generated from a session recorded in a real SQLite store."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta

import pytest
from matplotlib.image import imread

from relaxd import cli
from relaxd.report import (
    FIGURE_DPI,
    FIGURE_SIZE_IN,
    ReportError,
    UnknownSessionError,
    open_store_for_report,
    per_second_rows,
    render_session_report,
    report_title,
    event_marks,
    scenario_story,
    resolve_session,
)
from relaxd.store import CSV_COLUMNS, AffectSecond, SessionStore, StoreError

START = datetime.fromisoformat("2024-03-05T10:00:00.000+00:00")
SECONDS = 120
NEGATIVE = range(40, 56)  # the negative episode
NO_FACE = range(90, 95)
PNG_SHAPE = (round(FIGURE_SIZE_IN[1] * FIGURE_DPI), round(FIGURE_SIZE_IN[0] * FIGURE_DPI))
# second -> event kind (and state change) as the daemon records them
EVENTS = {
    0: ("started", "idle", "starting"),
    20: ("intensity_raised", "running", "running"),
    44: ("intensity_lowered", "running", "running"),
    50: ("adverse_reaction", "running", "halted"),
    100: ("estop", "halted", "estopped"),
}
ALERT_SECOND = 51


def at(second: float) -> str:
    return (START + timedelta(seconds=second)).isoformat(timespec="milliseconds")


def affect_row(second: int) -> AffectSecond:
    if second in NO_FACE:
        return AffectSecond(second, 0.0, 0.0, 0.0, "none", None, 0.0, 0.0, 15)
    if second in NEGATIVE:
        return AffectSecond(second, 0.7, 0.2, 0.1, "negative", "fear", 0.8, 1.0, 15)
    positive = 0.6 if second > 60 else 0.2
    group = "positive" if positive > 0.5 else "neutral"
    return AffectSecond(second, 0.1, 0.9 - positive, positive, group, "happy" if group == "positive" else "neutral",
                        0.7, 0.9, 15)


def record_session(store: SessionStore) -> int:
    """A two-minute session: calm start, a negative episode that halts, an alert, then an e-stop."""
    profile = store.create_profile("Robin 7", light_cap=0.8)
    session = store.start_session(profile.id, "calm-sea", started_at=at(0))
    for second in range(SECONDS):
        store.add_affect_second(session, affect_row(second))
        level = min(0.8, 0.3 + second / 200) if second < 50 else 0.0
        store.add_stimulus_second(session, second, light=level, sound=level / 2, vibration=level / 4)
    for second, (kind, before, after) in EVENTS.items():
        store.add_event(session, kind, from_state=before, to_state=after, reason=f"test {kind}",
                        time=at(second + 0.3))
    store.insert_alert(alert_id="a1", time=at(ALERT_SECOND + 0.5), kind="adverse_reaction", priority="high",
                       message="negative affect for 6 s", session_id=session, data={})
    store.end_session(session, "estop", ended_at=at(SECONDS))
    return session


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(db path, session id, png, csv): one recorded session and its report, made once."""
    folder = tmp_path_factory.mktemp("report")
    db = folder / "relaxd.db"
    with SessionStore(db) as store:
        session = record_session(store)
        png, table = render_session_report(store, session, folder / "out")
    return db, session, png, table


def read_csv(path):
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def assert_real_picture(path):
    image = imread(path)
    assert image.shape[:2] == PNG_SHAPE
    assert image[..., :3].std() > 0.05  # not one flat colour


# -- the report of a recorded session -------------------------------------------------------


def test_report_files_are_named_after_session_and_pseudonym(recorded):
    _, session, png, table = recorded
    assert png.name == f"session-{session}-Robin-7.png"
    assert table.name == f"session-{session}-Robin-7.csv"
    assert sorted(p.name for p in png.parent.iterdir()) == sorted([png.name, table.name])  # no temp files left


def test_picture_opens_with_the_expected_size_and_is_not_blank(recorded):
    assert_real_picture(recorded[2])


def test_csv_has_one_row_per_second_with_the_export_columns(recorded):
    columns, rows = read_csv(recorded[3])
    assert tuple(columns) == CSV_COLUMNS
    assert [int(r["second"]) for r in rows] == list(range(SECONDS))
    assert {r["dominant_group"] for r in rows if int(r["second"]) in NEGATIVE} == {"negative"}
    assert {r["dominant_group"] for r in rows if int(r["second"]) in NO_FACE} == {"none"}
    assert float(rows[45]["negative"]) == pytest.approx(0.7)
    assert float(rows[45]["confidence"]) == pytest.approx(0.8)
    assert float(rows[10]["light"]) == pytest.approx(0.35)
    assert float(rows[10]["vibration"]) == pytest.approx(0.35 / 4)
    assert rows[10]["dominant_label"] == "neutral"


def test_events_and_alerts_sit_at_their_seconds(recorded):
    _, rows = read_csv(recorded[3])
    for second, (kind, _, _) in EVENTS.items():
        assert rows[second]["events"].startswith(kind), (second, rows[second]["events"])
    assert "running->halted" in rows[50]["events"]
    assert rows[ALERT_SECOND]["alerts"] == "high:adverse_reaction"
    marked = {int(r["second"]) for r in rows if r["events"] or r["alerts"]}
    assert marked == {*EVENTS, ALERT_SECOND}


def test_seconds_without_a_face_are_grey_edge_to_edge_as_the_legend_says(recorded):
    """The legend's "no face" grey fills those seconds whole (a stepped fill left half seconds white)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb

    from relaxd.report import NO_FACE_COLOUR, draw_report

    db, session, _, _ = recorded
    with SessionStore(db) as store:
        data = store.session_data(session)
    figure = draw_report(data, per_second_rows(data))
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    affect = figure.axes[1]
    grey = np.array(to_rgb(NO_FACE_COLOUR)) * 255
    for second in (NO_FACE.start - 0.2, NO_FACE.start + 1.5, NO_FACE.stop - 1 + 0.2):  # 0.5 is the edge
        x, y = affect.transData.transform((second, 0.5))
        pixel = pixels[pixels.shape[0] - round(y), round(x)]
        assert np.abs(pixel - grey).max() <= 2, (second, pixel)


def test_the_title_says_who_what_when_and_why_it_ended_in_words(recorded):
    db, session, _, _ = recorded
    with SessionStore(db) as store:
        data = store.session_data(session)
    title = report_title(data, per_second_rows(data))
    assert title.startswith(f"Session {session} · Robin 7 · scenario calm-sea\n")
    assert "(2 min 00 s) · end: emergency stop\n" in title, title
    assert title.splitlines()[2].startswith("scenarios: "), title


def test_the_report_says_who_chose_each_scenario_and_each_switch(tmp_path):
    with SessionStore(tmp_path / "relaxd.db") as store:
        kid = store.create_profile("kid-story")
        session = store.start_session(kid.id, "calm-sea", started_at=at(0))
        store.add_event(session, "started", from_state="idle", to_state="starting", time=at(0),
                        data={"scenario": "calm-sea", "chosen_by": "learner",
                              "why": "calmed in 4 of the last 5 sessions with it"})
        store.add_event(session, "scenario_ended", time=at(130), data={"scenario": "calm-sea", "reward": 0.1})
        store.add_event(session, "scenario_switched", time=at(130), reason="negative in 60% ...",
                        data={"from": "calm-sea", "to": "quiet-glow", "why": "new for this child",
                              "negative_share": 0.6})
        store.add_affect_second(session, affect_row(0))
        data = store.session_data(session)
        png, table = render_session_report(store, session, tmp_path)
    assert scenario_story(data) == ("scenarios: calm-sea (learner: calmed in 4 of the last 5 sessions with it), "
                                    "at 2:10 to quiet-glow (negative 60%: new for this child)")
    assert [m.label for m in event_marks(data)] == ["start", "to quiet-glow"]  # the outcome stays in the table
    _, rows = read_csv(table)
    assert "scenario_switched: negative in 60% ..." in rows[130]["events"]
    assert png.stat().st_size > 0


def test_second_without_any_record_is_an_empty_row(tmp_path):
    with SessionStore(tmp_path / "relaxd.db") as store:
        session = store.start_session(None, "calm-sea", started_at=at(0))
        store.add_affect_second(session, affect_row(0))
        store.add_affect_second(session, affect_row(3))
        png, table = render_session_report(store, session, tmp_path)
    _, rows = read_csv(table)
    assert png.name == f"session-{session}-anonymous.png"
    assert [r["second"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[1]["dominant_group"] == "" and rows[1]["light"] == ""
    assert rows[3]["dominant_group"] == "neutral"


def test_empty_session_still_gets_a_report_that_says_so(tmp_path):
    with SessionStore(tmp_path / "relaxd.db") as store:
        profile = store.create_profile("Kim")
        session = store.start_session(profile.id, "forest")
        png, table = render_session_report(store, session, tmp_path)
    assert_real_picture(png)  # title and the 'no data recorded' words
    columns, rows = read_csv(table)
    assert tuple(columns) == CSV_COLUMNS and rows == []


def test_pseudonym_is_made_safe_for_a_file_name(tmp_path):
    with SessionStore(tmp_path / "relaxd.db") as store:
        profile = store.create_profile("Lía / ../x")
        session = store.start_session(profile.id, "forest")
        png, _ = render_session_report(store, session, tmp_path / "out")
    assert png.name == f"session-{session}-Lía-x.png"
    assert png.parent == tmp_path / "out"


def test_unwritable_out_dir_is_a_report_error(recorded, tmp_path):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("in the way")
    with SessionStore(recorded[0]) as store:
        with pytest.raises(ReportError, match="--out-dir"):
            render_session_report(store, recorded[1], not_a_folder)


# -- choosing the session ---------------------------------------------------------------------


def test_latest_is_the_newest_session(recorded, tmp_path):
    with SessionStore(recorded[0]) as store:
        assert resolve_session(store, "latest") == recorded[1]
        assert resolve_session(store, str(recorded[1])) == recorded[1]


def test_latest_in_an_empty_store_is_a_clear_error(tmp_path):
    with SessionStore(tmp_path / "relaxd.db") as store:
        with pytest.raises(UnknownSessionError, match="no sessions yet"):
            resolve_session(store, "latest")


def test_unknown_session_lists_the_latest_ids(tmp_path):
    with SessionStore(tmp_path / "relaxd.db") as store:
        ids = [store.start_session(None, "calm-sea") for _ in range(7)]
        with pytest.raises(UnknownSessionError) as caught:
            resolve_session(store, "99")
        with pytest.raises(UnknownSessionError, match="latest are: 7 "):
            render_session_report(store, 99, tmp_path)
    message = str(caught.value)
    assert "no session 99" in message
    for newest in ids[-5:]:
        assert f"{newest} (" in message
    assert "1 (" not in message  # only the latest few


def test_session_that_is_not_a_number_is_refused(tmp_path):
    with SessionStore(tmp_path / "relaxd.db") as store:
        with pytest.raises(ReportError, match="whole number"):
            resolve_session(store, "yesterday")


def test_missing_store_is_an_error_and_is_not_created(tmp_path):
    missing = tmp_path / "nope.db"
    with pytest.raises(StoreError, match="no session store"):
        open_store_for_report(missing)
    assert not missing.exists()


# -- the command line -------------------------------------------------------------------------


def test_cli_writes_the_report(recorded, tmp_path, capsys):
    db, session, _, _ = recorded
    out = tmp_path / "reports"
    assert cli.main(["report", str(session), "--db", str(db), "--out-dir", str(out)]) == 0
    png = out / f"session-{session}-Robin-7.png"
    assert str(png) in capsys.readouterr().out
    assert_real_picture(png)
    _, rows = read_csv(out / f"session-{session}-Robin-7.csv")
    assert len(rows) == SECONDS


def test_cli_latest_writes_into_the_current_folder(recorded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "latest", "--db", str(recorded[0])]) == 0
    assert (tmp_path / f"session-{recorded[1]}-Robin-7.csv").is_file()


@pytest.mark.parametrize("argv_tail, message", [
    (["42"], "no session 42"),
    (["many"], "whole number"),
])
def test_cli_bad_session_is_a_usage_error(recorded, tmp_path, capsys, argv_tail, message):
    code = cli.main(["report", *argv_tail, "--db", str(recorded[0]), "--out-dir", str(tmp_path)])
    assert code == cli.EXIT_USAGE
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_or_corrupt_store_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["report", "1", "--db", str(tmp_path / "missing.db")]) == cli.EXIT_USAGE
    assert "no session store" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    assert cli.main(["report", "1", "--db", str(corrupt)]) == cli.EXIT_USAGE
    assert "not a readable SQLite session store" in capsys.readouterr().err
