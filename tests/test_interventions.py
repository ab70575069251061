"""Decisions end to end: crafted event files through a real replay, the live
clock of the key-group actor, the CDNOW demo configuration, and following a
growing file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from operators.clv import ValueModel
from operators.decisions import DecisionSettings
from operators.keygroup import ClockSettings, KeyGroupBatch, KeyGroupSettings
from operators.rules import parse_rules
from state.record import format_time
from stream.config import parse_time
from stream.params import load_params
from tests.helpers_unit import make_touch
from tests.support import (
    CDNOW_MASTER,
    ROOT,
    event,
    read_jsonl,
    touchstream,
    write_jsonl,
)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CDNOW_CONFIG = ROOT / "data" / "cdnow" / "touchstream.toml"

RULES = b"""
[[rule]]
name = "silent"
[rule.when]
signal = "silence"
[[rule.then]]
action = "care_task"

[[rule]]
name = "back"
[rule.when]
signal = "silence_ended"
[[rule.then]]
action = "notify_rep"

[[rule]]
name = "falling"
[rule.when]
signal = "decline"
[[rule.then]]
action = "escalate_customer_success"
"""


def ms(text: str) -> int:
    return parse_time(text, "UTC")


def config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "rules.toml").write_bytes(RULES)
    path = tmp_path / "touchstream.toml"
    path.write_text(f'rules = "rules.toml"\n[silence]\nwindow = "48h"\n{extra}')
    return path


def message(event_id: str, ts: str | int, **fields: Any) -> dict[str, Any]:
    base = {"kind": "message", "channel": "wechat", "amount": None, **fields}
    return event(event_id=event_id, ts=ts, **base)


def replay(tmp_path: Path, events: list[dict[str, Any]], *args: str) -> Path:
    source = write_jsonl(tmp_path / "events.jsonl", events)  # type: ignore[arg-type]
    out = tmp_path / "out"
    result = touchstream(
        "replay", source, "--format", "jsonl", "--config", config(tmp_path),
        "--out", out, *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


SILENCE_EVENTS = [
    message("m1", "2024-03-01T10:00:00Z"),
    # A rep's message inside the window does not move the deadline.
    message("rep1", "2024-03-02T09:00:00Z", direction="outbound"),
    # Another customer's order moves event time past c1's deadline.
    event(event_id="o1", customer_id="c2", ts="2024-03-05T00:00:00Z"),
    message("m2", "2024-03-06T12:00:00Z", channel="email"),
]


@pytest.mark.parametrize("kernel", ["0", "1"], ids=["native", "pure"])
def test_silence_fires_at_the_last_inbound_touch_plus_48_hours_and_ends_on_the_next(
    tmp_path: Path, kernel: str
) -> None:
    source = write_jsonl(tmp_path / "events.jsonl", SILENCE_EVENTS)  # type: ignore[arg-type]
    result = touchstream(
        "replay", source, "--format", "jsonl", "--config", config(tmp_path),
        "--out", tmp_path / "out", env={"TOUCHSTREAM_PURE": kernel},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    decided = read_jsonl(tmp_path / "out" / "interventions.jsonl")

    # c2's deadline (03-07 00:00) is after the last event: it never fires.
    assert [(d["customer_id"], d["signal"], d["action"]) for d in decided] == [
        ("c1", "silence", "care_task"),
        ("c1", "silence_ended", "notify_rep"),
    ]
    silence, ended = decided
    assert silence["event_time"] == silence["emitted_at"] == "2024-03-03T10:00:00.000Z"
    assert (silence["trigger_event_id"], silence["trigger_ts"]) == (None, None)
    assert silence["channel"] == "wechat"
    assert "48.0 h" in silence["reason"]
    assert ended["event_time"] == "2024-03-06T12:00:00.000Z"
    assert ended["trigger_event_id"] == "m2"
    assert ended["trigger_ts"] == "2024-03-06T12:00:00.000Z"
    assert ended["channel"] == "email"
    assert "Inbound touch on email after 5.1 days of silence" in ended["reason"]


def test_the_same_file_gives_the_same_intervention_ids_every_time(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = replay(tmp_path / "a", SILENCE_EVENTS) / "interventions.jsonl"
    second = replay(tmp_path / "b", SILENCE_EVENTS, "--workers", "2")
    assert first.read_bytes() == (second / "interventions.jsonl").read_bytes()


def test_nothing_is_decided_after_the_as_of_time(tmp_path: Path) -> None:
    out = replay(tmp_path, SILENCE_EVENTS, "--as-of", "2024-03-03T09:59:59Z")

    assert read_jsonl(out / "interventions.jsonl") == []


def orders(customer: str, days: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [
        event(event_id=f"{customer}-{day}", customer_id=customer, ts=f"{day}T00:00:00Z",
              amount=amount)
        for day, amount in days
    ]  # fmt: skip


# A buys three times in Q1 1997 and stops; B buys again in November.
DECLINE_EVENTS = (
    orders("A", [("1997-01-05", 30.0), ("1997-02-10", 25.0), ("1997-03-20", 40.0)])
    + orders("B", [("1997-01-05", 30.0), ("1997-02-10", 25.0), ("1997-11-15", 30.0)])
    + orders("C", [("1998-01-20", 10.0)])
)
QUARTER_ENDS = ["1997-04-01", "1997-07-01", "1997-10-01", "1998-01-01"]


def clv_at(history: list[tuple[str, float]], boundary: str) -> float:
    """CLV by hand from the model: x, t_x, T in days at a quarter's end."""
    model = ValueModel(load_params(None)[0], 364.0)
    end = ms(boundary)
    days = [ms(day) for day, _ in history if ms(day) < end]
    repeat_values = [amount for day, amount in history if ms(day) < end][1:]
    mean = sum(repeat_values) / len(repeat_values) if repeat_values else None
    x = len(days) - 1
    return model.evaluate(
        x, (days[-1] - days[0]) / DAY_MS, (end - days[0]) / DAY_MS, mean
    ).clv


def test_three_quarterly_falls_of_clv_give_a_decline_and_two_give_none(
    tmp_path: Path,
) -> None:
    a = [("1997-01-05", 30.0), ("1997-02-10", 25.0), ("1997-03-20", 40.0)]
    b = [("1997-01-05", 30.0), ("1997-02-10", 25.0), ("1997-11-15", 30.0)]
    a_clv = [clv_at(a, end) for end in QUARTER_ENDS]
    b_clv = [clv_at(b, end) for end in QUARTER_ENDS]
    # The premise, by hand: A falls by 5 % or more three times, B twice.
    assert all(
        after <= 0.95 * before for before, after in zip(a_clv, a_clv[1:], strict=False)
    )
    assert b_clv[1] <= 0.95 * b_clv[0] and b_clv[2] <= 0.95 * b_clv[1]
    assert b_clv[3] > b_clv[2]

    out = replay(tmp_path, DECLINE_EVENTS)

    declines = [
        d for d in read_jsonl(out / "interventions.jsonl") if d["signal"] == "decline"
    ]
    assert [(d["customer_id"], d["event_time"]) for d in declines] == [
        ("A", "1998-01-01T00:00:00.000Z")
    ]
    assert declines[0]["clv"] == pytest.approx(a_clv[3], rel=1e-12)
    drop = (a_clv[2] - a_clv[3]) / a_clv[2]
    assert f"(-{drop * 100:.1f} %)" in declines[0]["reason"]


def test_the_cusum_detector_adds_up_the_falls_to_its_threshold(
    tmp_path: Path,
) -> None:
    a = [("1997-01-05", 30.0), ("1997-02-10", 25.0), ("1997-03-20", 40.0)]
    a_clv = [clv_at(a, end) for end in QUARTER_ENDS]
    # The CUSUM by hand: it signals when the sum reaches the threshold, and
    # starts again from 0.
    total, expected = 0.0, []
    for before, after, end in zip(a_clv, a_clv[1:], QUARTER_ENDS[1:], strict=False):
        total = max(0.0, total + (before - after) / before - 0.02)
        if total >= 0.9:
            expected.append(end)
            total = 0.0
    assert len(expected) == 1  # two falls add up to it, the third does not

    events = orders("A", a) + orders("C", [("1998-01-20", 1.0)])
    source = write_jsonl(tmp_path / "events.jsonl", events)  # type: ignore[arg-type]
    path = config(tmp_path, '[decline]\nmethod = "cusum"\ncusum_threshold = 0.9\n')
    result = touchstream(
        "replay", source, "--format", "jsonl", "--config", path, "--out", tmp_path / "o"
    )
    assert result.returncode == 0, result.stderr

    declines = [
        d["event_time"][:10]
        for d in read_jsonl(tmp_path / "o" / "interventions.jsonl")
        if d["signal"] == "decline"
    ]
    assert declines == expected


def live_actor(clock: list[int]) -> Any:
    settings = KeyGroupSettings(
        partitions=1,
        decisions=DecisionSettings(silence_window_ms=2 * HOUR_MS),
        rules=lambda: parse_rules(RULES, "rules.toml"),
        clock=ClockSettings(live=True, allowed_lateness_ms=1000, idle_timeout_ms=500),
    )
    return settings.build(wall_ms=lambda: clock[0])


def test_on_the_live_clock_an_idle_input_lets_the_wall_clock_fire_a_silence() -> None:
    start = ms("2024-03-01T10:00:00Z")
    clock = [start]
    actor = live_actor(clock)
    touch = make_touch(ts_ms=start, event_id="m1")
    assert actor.on_batch([KeyGroupBatch(0, [touch], start, False)]) != []

    clock[0] = start + 600  # idle, but the deadline is 2 h away
    assert actor.notify_at_ms() == start + 2 * HOUR_MS + 1000 + 1
    assert actor.on_notify() == []

    clock[0] = start + 2 * HOUR_MS + 1001
    (report,) = actor.on_notify()

    assert [(d.signal, d.event_time) for d in report.interventions] == [
        ("silence", format_time(start + 2 * HOUR_MS))
    ]
    assert report.interventions[0].emitted_at == format_time(clock[0])


def test_a_late_event_updates_aggregates_and_never_fires_again() -> None:
    start = ms("2024-03-01T10:00:00Z")
    clock = [start]
    actor = live_actor(clock)
    actor.on_batch(
        [KeyGroupBatch(0, [make_touch(ts_ms=start, event_id="m1")], start, False)]
    )
    clock[0] = start + 3 * HOUR_MS
    (fired,) = actor.on_notify()
    assert [d.signal for d in fired.interventions] == ["silence"]

    # Late: before the watermark (wall clock less 1 s of lateness), and so
    # old that its own deadline would already be past.
    late = make_touch(ts_ms=start + 30 * 60_000, event_id="m0", digest=1)
    (report,) = actor.on_batch([KeyGroupBatch(0, [late], start + 3 * HOUR_MS, False)])
    clock[0] = start + 10 * HOUR_MS
    after = actor.on_notify()

    assert (report.counts.applied, report.counts.late) == (1, 1)
    assert report.interventions == [] and after == []
    (customer,) = actor.on_eof()[0].customers
    assert customer["channels"]["store"]["inbound"] == 2


def test_the_cdnow_demo_yields_a_worklist_the_same_on_1_and_2_workers(
    tmp_path: Path,
) -> None:
    runs = {}
    for name, workers in (("one", "1"), ("two", "2"), ("again", "1")):
        result = touchstream(
            "replay", CDNOW_MASTER, "--format", "cdnow", "--config", CDNOW_CONFIG,
            "--workers", workers, "--out", tmp_path / name,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        runs[name] = (tmp_path / name / "interventions.jsonl").read_bytes()

    assert runs["one"] == runs["two"] == runs["again"]
    decided = [orjson.loads(line) for line in runs["one"].splitlines()]
    assert 1_000 <= len(decided) <= 10_000
    # At-risk customers had stopped buying: the time since their last
    # purchase (read from the raw file) is longer than their own average gap
    # between purchase days. Declining ones had slowed down: fewer purchase
    # days in the half year before the decision than their earlier pace.
    purchase_days: dict[str, set[int]] = {}
    for line in CDNOW_MASTER.read_text().splitlines()[1:]:
        customer, day, *_ = line.split()
        day_ms = ms(f"{day[:4]}-{day[4:6]}-{day[6:]}")
        purchase_days.setdefault(customer, set()).add(day_ms)
    signals = {"decline": 0, "at_risk": 0}
    for decision in decided:
        if decision["signal"] in signals:
            signals[decision["signal"]] += 1
            end = ms(decision["event_time"][:10])
            days = sorted(d for d in purchase_days[decision["customer_id"]] if d < end)
            if decision["signal"] == "at_risk":
                usual_gap = (days[-1] - days[0]) / (len(days) - 1)
                assert end - days[-1] > usual_gap, decision
            else:
                half_year = end - 182 * DAY_MS
                earlier = [d for d in days if d < half_year]
                recent = len(days) - len(earlier)
                pace = len(earlier) / max(half_year - days[0], DAY_MS) * 182 * DAY_MS
                assert recent < pace, decision
    assert signals["decline"] > 50 and signals["at_risk"] > 50


def test_a_broken_rules_file_in_the_configuration_is_refused_naming_rule_and_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.toml").write_text(
        '[[rule]]\nname = "quiet"\n[rule.when]\nsignal = "silence"\nmood = "sad"\n'
        '[[rule.then]]\naction = "care_task"\n'
    )
    path = tmp_path / "touchstream.toml"
    path.write_text('rules = "rules.toml"\n')
    source = write_jsonl(tmp_path / "e.jsonl", [event()])

    result = touchstream("replay", source, "--format", "jsonl", "--config", path)

    assert result.returncode == 2
    assert "rules.toml" in result.stderr and 'rule "quiet"' in result.stderr
    assert "mood" in result.stderr
    assert "Traceback" not in result.stderr


def test_following_a_file_fires_a_silence_while_the_file_stays_idle(
    tmp_path: Path,
) -> None:
    source = tmp_path / "live.jsonl"
    source.write_bytes(b"")
    (tmp_path / "rules.toml").write_bytes(RULES)
    path = tmp_path / "touchstream.toml"
    path.write_text(
        'rules = "rules.toml"\n[silence]\nwindow = "2s"\n'
        '[clock]\nallowed_lateness = "500ms"\nidle_timeout = "500ms"\n'
    )
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "stream", "replay", str(source), "--format", "jsonl",
         "--follow", "--config", str(path), "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ},
    )  # fmt: skip
    try:
        interventions = out / "interventions.jsonl"
        deadline = time.monotonic() + 20
        while not interventions.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        now_ms = time.time_ns() // 1_000_000
        with source.open("ab") as file:
            file.write(orjson.dumps(message("m1", now_ms)) + b"\n")

        deadline = time.monotonic() + 10
        decided: list[dict[str, Any]] = []
        while not decided and time.monotonic() < deadline:
            time.sleep(0.1)
            decided = read_jsonl(interventions)
        assert [(d["customer_id"], d["signal"]) for d in decided] == [("c1", "silence")]
        assert decided[0]["event_time"] == format_time(now_ms + 2000)
        assert decided[0]["emitted_at"] >= decided[0]["event_time"]
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    assert "interventions                  1" in stdout
    assert read_jsonl(out / "customers.jsonl")[0]["customer_id"] == "c1"


def test_on_the_live_clock_a_resumed_actor_decides_its_backlog_in_event_time() -> None:
    start = ms("2024-03-01T10:00:00Z")
    clock = [start]
    actor = live_actor(clock)
    actor.on_batch(
        [KeyGroupBatch(0, [make_touch(ts_ms=start, event_id="m1")], start, False)]
    )
    snapshot = actor.snapshot()

    # Back three hours later; one touch arrived meanwhile, of another customer.
    clock[0] = start + 3 * HOUR_MS
    resumed = live_actor(clock).settings.build(snapshot, wall_ms=lambda: clock[0])
    before = resumed.on_notify()  # bytewax asks at once: nothing moves yet
    backlog = make_touch(ts_ms=start + 200, event_id="m2", customer_id="c2")
    (applied,) = resumed.on_batch([KeyGroupBatch(0, [backlog], start + 200, False)])
    clock[0] += 600  # the partition is idle: the wall clock takes over
    (fired,) = resumed.on_notify()

    assert before == [] and applied.counts.late == 0
    assert sorted((d.customer_id, d.event_time) for d in fired.interventions) == [
        ("c1", format_time(start + 2 * HOUR_MS)),
        ("c2", format_time(start + 200 + 2 * HOUR_MS)),
    ]


def test_on_the_live_clock_a_batch_is_decided_as_if_its_events_came_one_by_one() -> (
    None
):
    # A restarted engine reads its backlog in large batches: the silence of
    # c1 (due at 2 h), another customer's touch that moves time past it, and
    # the touch that ends it arrive together.
    start = ms("2024-03-01T10:00:00Z")
    clock = [start + 4 * HOUR_MS]
    touches = [
        make_touch(ts_ms=start, event_id="m1"),
        make_touch(ts_ms=start + 150 * 60_000, event_id="o1", customer_id="c2"),
        make_touch(ts_ms=start + 3 * HOUR_MS, event_id="m2", digest=1),
    ]
    whole = live_actor(clock).on_batch(
        [KeyGroupBatch(0, touches, start + 3 * HOUR_MS, False)]
    )
    actor = live_actor(clock)
    one_by_one = [
        actor.on_batch([KeyGroupBatch(0, [touch], touch.ts_ms, False)])
        for touch in touches
    ]

    expected = [
        ("silence", format_time(start + 2 * HOUR_MS), None),
        ("silence_ended", format_time(start + 3 * HOUR_MS), "m2"),
    ]
    decided = [
        (d.signal, d.event_time, d.trigger_event_id)
        for report in whole
        for d in report.interventions
    ]
    assert decided == expected
    assert [
        (d.signal, d.event_time, d.trigger_event_id)
        for reports in one_by_one
        for report in reports
        for d in report.interventions
    ] == expected
    assert sum(report.counts.late for report in whole) == 0

    # The key group holds only c1 and c3 (an outbound touch: no silence);
    # the touch that moves time past the silence belongs to another key
    # group, and reaches this one as the partition's high time just before
    # c1's return (from the decode step).
    other = make_touch(ts_ms=start + 10, event_id="x", customer_id="c3", inbound=False)
    share = [touches[0], other, touches[2]]
    highs = [-1, start, start + 150 * 60_000]
    reports = live_actor(clock).on_batch(
        [KeyGroupBatch(0, share, start + 3 * HOUR_MS, False, 0, highs)]
    )
    assert [
        (d.signal, d.event_time, d.trigger_event_id)
        for report in reports
        for d in report.interventions
    ] == expected


def test_touched_customers_are_published_at_most_once_an_interval() -> None:
    start = ms("2024-03-01T10:00:00Z")
    clock = [start]
    settings = KeyGroupSettings(
        partitions=1,
        decisions=DecisionSettings(silence_window_ms=2 * HOUR_MS),
        rules=lambda: parse_rules(RULES, "rules.toml"),
        clock=ClockSettings(live=True, allowed_lateness_ms=1000, idle_timeout_ms=500),
        publish_customers=True,
        publish_every_ms=1000,
    )
    actor = settings.build(wall_ms=lambda: clock[0])

    def batch(event_id: str, customer_id: str) -> list[Any]:
        touch = make_touch(ts_ms=clock[0], event_id=event_id, customer_id=customer_id)
        return actor.on_batch([KeyGroupBatch(0, [touch], clock[0], False)])

    (first,) = batch("e1", "c1")
    assert [c["customer_id"] for c in first.customers] == ["c1"]
    clock[0] = start + 300
    (second,) = batch("e2", "c1")
    clock[0] = start + 600
    (third,) = batch("e3", "c2")
    assert second.customers == third.customers == []
    # Due a second after the last publication (before the partition idles).
    assert actor.notify_at_ms() == start + 1000
    clock[0] = start + 1000
    (flushed,) = actor.on_notify()
    assert [c["customer_id"] for c in flushed.customers] == ["c1", "c2"]
    assert flushed.customers[0]["channels"]["store"]["inbound"] == 2
    assert actor.notify_at_ms() == start + 600 + 500 + 1


def test_a_partition_with_more_to_read_is_not_idle_however_long_the_engine_takes() -> (
    None
):
    # The engine paused (a checkpoint, a busy machine) after a full batch:
    # the input is not idle, so time must not jump to the wall clock and
    # make what is still to be read late.
    start = ms("2024-03-01T10:00:00Z")
    clock = [start + 3 * HOUR_MS]
    actor = live_actor(clock)
    first = make_touch(ts_ms=start, event_id="m1")
    actor.on_batch([KeyGroupBatch(0, [first], start, False, behind=True)])
    clock[0] += 10_000  # far past the idle timeout of 500 ms
    assert actor.on_notify() == []
    assert actor.watermark_ms == start - 1000

    # Read on: the touch ending the silence is on time, not late.
    back = make_touch(ts_ms=start + 150 * 60_000, event_id="m2", digest=1)
    later = make_touch(ts_ms=start + 130 * 60_000, event_id="o1", customer_id="c2")
    (report,) = actor.on_batch(
        [KeyGroupBatch(0, [later, back], start + 150 * 60_000, False)]
    )
    assert report.counts.late == 0
    assert [(d.signal, d.trigger_event_id) for d in report.interventions] == [
        ("silence", None),
        ("silence_ended", "m2"),
    ]
    # Caught up: idle after the timeout, and then time follows the wall clock.
    assert actor.notify_at_ms() == clock[0] + 500 + 1


def test_a_live_share_of_duplicates_only_is_counted_and_applies_nothing() -> None:
    start = ms("2024-03-01T10:00:00Z")
    clock = [start]
    actor = live_actor(clock)
    touch = make_touch(ts_ms=start, event_id="m1")
    actor.on_batch([KeyGroupBatch(0, [touch], start, False)])
    (again,) = actor.on_batch([KeyGroupBatch(0, [touch], start, False)])
    assert (again.counts.applied, again.counts.duplicates) == (0, 1)


def test_a_wake_up_long_after_it_was_asked_for_is_a_stalled_engine_not_idleness() -> (
    None
):
    # The engine was held up (a store it waited for) past the idle timeout:
    # events written meanwhile are still to be read and must not be late.
    start = ms("2024-03-01T10:00:00Z")
    clock = [start]
    actor = live_actor(clock)
    actor.on_batch([KeyGroupBatch(0, [make_touch(ts_ms=start)], start, False)])
    assert actor.notify_at_ms() == start + 500 + 1
    clock[0] = start + 3_000  # woken 2.5 s late
    actor.on_notify()
    assert actor.watermark_ms == start - 1000
    late_read = make_touch(ts_ms=start + 1_500, event_id="m2", digest=1)
    (report,) = actor.on_batch([KeyGroupBatch(0, [late_read], start + 1_500, False)])
    assert report.counts.late == 0

    # Woken on time with nothing read since: idle, time follows the clock.
    wanted = actor.notify_at_ms()
    assert wanted == clock[0] + 500 + 1
    clock[0] = wanted
    actor.on_notify()
    assert actor.watermark_ms == wanted - 1000


def test_a_batch_of_one_partition_after_a_stall_does_not_make_the_others_idle() -> None:
    # Two partitions; the engine stalls (Redis down). The first partition
    # read afterwards must not leave the other out of the low mark: its
    # backlog is still to be read.
    start = ms("2024-03-01T10:00:00Z")
    clock = [start]
    settings = KeyGroupSettings(
        partitions=2,
        decisions=DecisionSettings(silence_window_ms=2 * HOUR_MS),
        rules=lambda: parse_rules(RULES, "rules.toml"),
        clock=ClockSettings(live=True, allowed_lateness_ms=200, idle_timeout_ms=1000),
    )
    actor = settings.build(wall_ms=lambda: clock[0])
    for part in (0, 1):
        touch = make_touch(ts_ms=start, event_id=f"m{part}", customer_id=f"c{part}")
        actor.on_batch([KeyGroupBatch(part, [touch], start, False)])
    assert actor.notify_at_ms() == start + 1000 + 1
    clock[0] = start + 3_000  # held up 2 s past the wake-up it asked for
    fresh = make_touch(ts_ms=start + 2_900, event_id="n0", customer_id="c0")
    actor.on_batch([KeyGroupBatch(0, [fresh], start + 2_900, False)])
    assert actor.watermark_ms == start - 200  # partition 1 still counts
    backlog = make_touch(ts_ms=start + 500, event_id="n1", customer_id="c1")
    (report,) = actor.on_batch([KeyGroupBatch(1, [backlog], start + 500, False)])
    assert report.counts.late == 0
