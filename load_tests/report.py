"""The report of a ``touchstream load`` run: ``report.json`` with every
figure, and ``report.png`` with latency over time and the percentile
spectrum (and, for a ramp, p99 against the rate of each step).

Latency figures are milliseconds. ``ack`` is the ingest's ack latency from
the moment a batch was due (corrected for coordinated omission);
``ack_service`` the same from the moment it was sent; ``end_to_end`` from
an event's due time to the intervention it triggered reaching the
subscriber.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psutil
from hdrh.histogram import HdrHistogram

from load_tests.subscriber import SubscriberResult, latency_histogram

if TYPE_CHECKING:
    from load_tests.runner import LoadResult

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# A step is held when it reached this share of its target rate, failed no
# request, and kept its end-to-end p99 under the bound.
HELD_SHARE = 0.95
MIN_SAMPLES = 20


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def latency(histogram: HdrHistogram) -> dict[str, Any]:
    """Percentiles and max of a histogram of microseconds, in ms."""
    count = histogram.get_total_count()
    figures: dict[str, Any] = {"count": count}
    for percentile in PERCENTILES:
        key = f"p{percentile:g}"
        value = histogram.get_value_at_percentile(percentile) if count else 0
        figures[key] = round(value / 1000, 3)
    figures["max"] = round(histogram.get_max_value() / 1000, 3) if count else 0.0
    figures["mean"] = round(histogram.get_mean_value() / 1000, 3) if count else 0.0
    return figures


def _decoded(encoded: str) -> HdrHistogram:
    histogram = latency_histogram()
    if encoded:
        histogram.decode_and_add(encoded.encode())
    return histogram


def _merged(histograms: list[HdrHistogram]) -> HdrHistogram:
    total = latency_histogram()
    for histogram in histograms:
        total.add(histogram)
    return total


def deliveries(subscriber: SubscriberResult, returns: dict[str, int]) -> dict[str, Any]:
    """Lost and duplicated interventions, as this subscriber saw them.

    Lost: a return the ingest accepted with no ``notify_rep`` triggered by
    it. Duplicated: copies beyond the first of one intervention id, of one
    action triggered by one event, and of one silence (customer, deadline
    and action) under another id.
    """
    lost = [
        event_id
        for event_id in returns
        if subscriber.trigger_counts.get(f"{event_id}/notify_rep", 0) == 0
    ]
    extra_ids = sum(count - 1 for count in subscriber.id_counts.values())
    extra_triggers = sum(count - 1 for count in subscriber.trigger_counts.values())
    extra_silences = sum(count - 1 for count in subscriber.silence_keys.values())
    return {
        "received": subscriber.received,
        "distinct_ids": len(subscriber.id_counts),
        "by_action": dict(sorted(subscriber.by_action.items())),
        "expected_returns": len(returns),
        "lost": len(lost),
        "lost_examples": sorted(lost)[:10],
        "duplicated": {
            "same_id": extra_ids,
            "same_trigger": extra_triggers,
            "same_silence": extra_silences,
        },
        "reconnects": subscriber.reconnects,
        "stream_errors": subscriber.errors,
    }


def build(result: LoadResult) -> dict[str, Any]:
    options = result.options
    generated = result.generator
    duration_s = options.duration_s
    e2e = _decoded(result.subscriber.e2e)
    e2e_by_second = {
        int(second): _decoded(encoded)
        for second, encoded in result.subscriber.e2e_by_second.items()
    }
    timeline = _timeline(result, e2e_by_second)
    steps = [
        {"start_s": step.start_s, "rate": step.rate} for step in (options.steps or ())
    ]
    body: dict[str, Any] = {
        "machine": machine(),
        "options": {
            "rate": None if options.steps else options.rate,
            "steps": steps or None,
            "duration_s": duration_s,
            "customers": options.traffic.customers,
            "zipf_exponent": options.traffic.zipf_exponent,
            "quiet_share": options.traffic.quiet_share,
            "order_share": options.traffic.order_share,
            "channel_mix": dict(options.traffic.channel_mix),
            "batch_size": options.batch_size,
            "connections": options.connections,
            "max_in_flight": options.max_in_flight,
            "seed": options.traffic.seed,
            "silence_window_ms": options.traffic.silence_window_ms,
            "allowed_lateness_ms": options.traffic.allowed_lateness_ms,
            "poll_interval_ms": options.poll_interval_ms,
            "scenario": options.scenario,
            "redis": options.redis,
        },
        "rate": {
            "target": _target_rate(result),
            "sent": round(generated.events_sent / duration_s, 1),
            "achieved": round(generated.events_accepted / duration_s, 1),
        },
        "events": {
            "due": generated.events_due,
            "sent": generated.events_sent,
            "accepted": generated.events_accepted,
            "rejected": generated.events_rejected,
            "failed": generated.events_failed,
            "dropped": generated.events_due - generated.events_sent,
        },
        "requests": {
            "due": generated.batches_due,
            "sent": generated.batches_sent,
            "dropped": generated.batches_dropped,
            "by_status": generated.batches_by_status,
            "failed": sum(
                count
                for status, count in generated.batches_by_status.items()
                if status != "OK"
            ),
            "generator_max_behind_ms": round(generated.max_behind_ms, 1),
        },
        "latency_ms": {
            "ack": latency(generated.ack),
            "ack_service": latency(generated.service),
            "end_to_end": latency(e2e),
        },
        "interventions": {
            **deliveries(result.subscriber, generated.returns),
            "drained": result.sentinels_seen == result.sentinels,
        },
        "server": _resources(
            [sample for sample in result.samples if sample.at_s < duration_s]
        ),
        "faults": [
            {**fault, "at_s": round(fault["at_s"] - result.started_at, 2)}
            for fault in result.faults
        ],
        "drain": {
            "sentinels": result.sentinels,
            "sentinels_seen": result.sentinels_seen,
            "seconds": round(result.drain_s, 2),
        },
        "timeline": timeline,
    }
    if result.slow_subscriber is not None:
        body["slow_subscriber"] = deliveries(result.slow_subscriber, generated.returns)
    if options.steps:
        body["steps"] = _steps(result, e2e_by_second)
        held = [step for step in body["steps"] if step["held"]]
        body["max_held_rate"] = max((step["rate"] for step in held), default=None)
        body["p99_bound_ms"] = options.p99_bound_ms
    return body


def _target_rate(result: LoadResult) -> float:
    options = result.options
    if not options.steps:
        return options.rate
    return round(result.generator.events_due / options.duration_s, 1)


def _timeline(
    result: LoadResult, e2e_by_second: dict[int, HdrHistogram]
) -> list[dict[str, Any]]:
    generated = result.generator
    seconds = sorted(set(generated.due_by_second) | set(generated.ack_by_second))
    samples = {int(sample.at_s): sample for sample in result.samples}
    rows = []
    for second in seconds:
        ack = generated.ack_by_second.get(second)
        e2e = e2e_by_second.get(second)
        sample = samples.get(second)
        rows.append(
            {
                "second": second,
                "due": generated.due_by_second.get(second, 0),
                "accepted": generated.accepted_by_second.get(second, 0),
                "ack_p99_ms": _p(ack, 99.0),
                "ack_max_ms": _max(ack),
                "e2e_p99_ms": _p(e2e, 99.0),
                "e2e_max_ms": _max(e2e),
                "e2e_count": 0 if e2e is None else e2e.get_total_count(),
                "cpu_percent": None if sample is None else sample.cpu_percent,
                "rss_mib": None
                if sample is None
                else {k: round(v / 2**20, 1) for k, v in sample.rss_bytes.items()},
            }
        )
    return rows


def _p(histogram: HdrHistogram | None, percentile: float) -> float | None:
    if histogram is None or not histogram.get_total_count():
        return None
    return round(float(histogram.get_value_at_percentile(percentile)) / 1000, 3)


def _max(histogram: HdrHistogram | None) -> float | None:
    if histogram is None or not histogram.get_total_count():
        return None
    return round(float(histogram.get_max_value()) / 1000, 3)


def _steps(
    result: LoadResult, e2e_by_second: dict[int, HdrHistogram]
) -> list[dict[str, Any]]:
    options = result.options
    generated = result.generator
    steps = list(options.steps)
    rows = []
    for index, step in enumerate(steps):
        end_s = (
            steps[index + 1].start_s if index + 1 < len(steps) else options.duration_s
        )
        seconds = range(int(step.start_s), int(end_s))
        ack = _merged(
            [
                generated.ack_by_second[s]
                for s in seconds
                if s in generated.ack_by_second
            ]
        )
        e2e = _merged([e2e_by_second[s] for s in seconds if s in e2e_by_second])
        accepted = sum(generated.accepted_by_second.get(s, 0) for s in seconds)
        achieved = accepted / max(end_s - step.start_s, 1e-9)
        e2e_figures = latency(e2e)
        ack_figures = latency(ack)
        # Too few interventions to judge by: the ack latency decides.
        judged = e2e_figures if e2e_figures["count"] >= MIN_SAMPLES else ack_figures
        rows.append(
            {
                "rate": round(step.rate, 1),
                "start_s": step.start_s,
                "achieved": round(achieved, 1),
                "ack_ms": ack_figures,
                "end_to_end_ms": e2e_figures,
                "held": achieved >= HELD_SHARE * step.rate
                and judged["p99"] <= options.p99_bound_ms,
            }
        )
    # Steps past the first one not held say nothing more.
    for index, row in enumerate(rows):
        if not row["held"]:
            for later in rows[index + 1 :]:
                later["held"] = False
            break
    return rows


def _resources(samples: list[Any]) -> dict[str, Any]:
    """CPU (percent of one core) and resident memory of each process over
    the load, the drain left out."""
    figures: dict[str, Any] = {}
    roles = sorted({role for sample in samples for role in sample.cpu_percent})
    for role in roles:
        cpu = [s.cpu_percent[role] for s in samples if role in s.cpu_percent]
        rss = [s.rss_bytes[role] for s in samples if role in s.rss_bytes]
        figures[role] = {
            "cpu_percent_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "cpu_percent_max": round(max(cpu), 1) if cpu else None,
            "rss_mib_max": round(max(rss) / 2**20, 1) if rss else None,
            "rss_mib_last": round(rss[-1] / 2**20, 1) if rss else None,
        }
    return figures


def write(result: LoadResult, body: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write `body` (:func:`build`) as report.json and its picture."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
    picture = out / "report.png"
    draw(body, result, picture)
    return json_path, picture


def draw(body: dict[str, Any], result: LoadResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    ramp = "steps" in body
    figure, axes = pyplot.subplots(
        3 if ramp else 2, 1, figsize=(11, 12 if ramp else 8.5)
    )
    over_time, spectrum = axes[0], axes[1]
    timeline = body["timeline"]
    seconds = [row["second"] for row in timeline]
    for key, label, style in (
        ("ack_p99_ms", "ack p99", "-"),
        ("ack_max_ms", "ack max", ":"),
        ("e2e_p99_ms", "end-to-end p99", "-"),
        ("e2e_max_ms", "end-to-end max", ":"),
    ):
        points = [
            (s, row[key]) for s, row in zip(seconds, timeline, strict=True) if row[key]
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            over_time.plot(xs, ys, style, label=label)
    over_time.set_yscale("log")
    over_time.set_xlabel("second of the run (by due time)")
    over_time.set_ylabel("latency (ms)")
    rates = over_time.twinx()
    rates.plot(
        seconds, [row["due"] for row in timeline], color="0.6", lw=0.8, label="due ev/s"
    )
    rates.plot(
        seconds,
        [row["accepted"] for row in timeline],
        color="0.3",
        lw=0.8,
        label="accepted ev/s",
    )
    rates.set_ylabel("events per second")
    # From zero: batches make the per-second counts step, which an axis
    # fitted to them would magnify.
    rates.set_ylim(0, 1.25 * max([row["due"] for row in timeline], default=1))
    for fault in body["faults"]:
        over_time.axvline(fault["at_s"], color="red", lw=1)
        over_time.annotate(fault["kind"], (fault["at_s"], 1), color="red", fontsize=8)
    handles = over_time.get_legend_handles_labels()
    more = rates.get_legend_handles_labels()
    over_time.legend(
        handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper left"
    )
    over_time.set_title(_title(body))

    generated = result.generator
    e2e = _decoded(result.subscriber.e2e)
    for histogram, label in (
        (generated.ack, "ack (from due time)"),
        (generated.service, "ack (from send: uncorrected)"),
        (e2e, "end to end"),
    ):
        if not histogram.get_total_count():
            continue
        spectrum.plot(*_spectrum(histogram), label=label)
    spectrum.set_xscale("log")
    spectrum.set_yscale("log")
    ticks = [1, 10, 100, 1000, 10000, 100000]
    spectrum.set_xticks(ticks)
    spectrum.set_xticklabels(["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    spectrum.set_xlabel("percentile")
    spectrum.set_ylabel("latency (ms)")
    spectrum.set_title("percentile spectrum")
    spectrum.legend(fontsize=8)
    spectrum.grid(True, which="major", alpha=0.3)

    if ramp:
        steps = body["steps"]
        axis = axes[2]
        axis.plot(
            [s["rate"] for s in steps],
            [s["ack_ms"]["p99"] for s in steps],
            "o-",
            label="ack p99",
        )
        axis.plot(
            [s["rate"] for s in steps if s["end_to_end_ms"]["count"]],
            [s["end_to_end_ms"]["p99"] for s in steps if s["end_to_end_ms"]["count"]],
            "o-",
            label="end-to-end p99",
        )
        axis.axhline(body["p99_bound_ms"], color="red", lw=1, label="bound")
        axis.set_xlabel("target rate (events/s)")
        axis.set_ylabel("p99 (ms)")
        axis.set_yscale("log")
        axis.set_title(f"ramp: highest rate held {body['max_held_rate']}")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _spectrum(histogram: HdrHistogram) -> tuple[list[float], list[float]]:
    """Points of the percentile spectrum: x is 1 / (1 - p), y the value."""
    xs: list[float] = []
    ys: list[float] = []
    total = histogram.get_total_count()
    top = 1 - 1 / max(total, 2)
    step = 0
    while True:
        fraction = 1 - 10 ** (-step / 20)
        if fraction > top:
            break
        xs.append(1 / (1 - fraction))
        ys.append(max(histogram.get_value_at_percentile(fraction * 100), 1) / 1000)
        step += 1
    xs.append(1 / (1 - top))
    ys.append(histogram.get_max_value() / 1000)
    return xs, ys


def _title(body: dict[str, Any]) -> str:
    rate = body["rate"]
    e2e = body["latency_ms"]["end_to_end"]
    ack = body["latency_ms"]["ack"]
    scenario = body["options"]["scenario"]
    return (
        f"target {rate['target']:.0f} ev/s, achieved {rate['achieved']:.0f}; "
        f"ack p99 {ack['p99']} ms; end-to-end p99 {e2e['p99']} ms"
        + (f"; fault: {scenario}" if scenario != "none" else "")
    )


def summary(result: LoadResult, body: dict[str, Any]) -> str:
    rate = body["rate"]
    requests = body["requests"]
    lines = [
        f"rate: target {rate['target']:.0f} ev/s, sent {rate['sent']:.0f}, "
        f"achieved {rate['achieved']:.0f}",
        f"requests: {requests['sent']} sent, {requests['dropped']} dropped, "
        f"by status {requests['by_status']}",
    ]
    for name, figures in body["latency_ms"].items():
        lines.append(
            f"{name} ms: p50 {figures['p50']} p90 {figures['p90']} "
            f"p99 {figures['p99']} p99.9 {figures['p99.9']} max {figures['max']} "
            f"(n={figures['count']})"
        )
    deliveries = body["interventions"]
    lines.append(
        f"interventions: {deliveries['received']} received, "
        f"{deliveries['expected_returns']} returns expected, "
        f"{deliveries['lost']} lost, duplicated {deliveries['duplicated']}"
    )
    if not deliveries["expected_returns"]:
        window_s = result.options.traffic.silence_window_ms / 1000
        lines.append(
            "no returns expected, so lost says nothing: quiet customers come "
            f"back after two silence windows; run longer than {2 * window_s:g} s "
            "(or shorten --silence-window)"
        )
    if not deliveries["drained"]:
        lines.append(
            "not drained: the engine had not decided everything sent within "
            f"{result.options.drain_timeout_s:.0f} s of the end; lost counts "
            "what had not arrived by then"
        )
    if "slow_subscriber" in body:
        slow = body["slow_subscriber"]
        lines.append(
            f"slow subscriber: {slow['received']} received, {slow['lost']} lost, "
            f"duplicated {slow['duplicated']}"
        )
    for role, figures in body["server"].items():
        lines.append(
            f"{role}: cpu {figures['cpu_percent_mean']}% mean, "
            f"{figures['cpu_percent_max']}% max; rss {figures['rss_mib_max']} MiB max"
        )
    if "steps" in body:
        for step in body["steps"]:
            lines.append(
                f"step {step['rate']:.0f} ev/s: achieved {step['achieved']:.0f}, "
                f"ack p99 {step['ack_ms']['p99']} ms, end-to-end p99 "
                f"{step['end_to_end_ms']['p99']} ms, held {step['held']}"
            )
        lines.append(f"highest rate held: {body['max_held_rate']}")
    return "\n".join(lines)
