"""The benchmark as a user runs it: a quick run end to end, every figure in
its JSON. Behaviour only: no test here judges a timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from load_tests.bench import TARGETS, naive_update
from operators.events import Event
from tests.support import ROOT, touchstream

REPLAYS = (
    "replay_quiet_jsonl_1w",
    "replay_jsonl_1w",
    "replay_jsonl_2w",
    "replay_msgpack_1w",
    "replay_msgpack_2w",
    "replay_unsorted_jsonl_1w",
    "pure_replay_jsonl_1w",
)
RATES = (
    *REPLAYS,
    "ordering",
    "naive_jsonl_1w",
    "steps_jsonl",
    "decode_jsonl",
    "decode_msgpack",
    "kernel_native",
    "kernel_pure",
)
MEMORY = ("memory_native", "memory_pure", "memory_naive")


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `--quick` run, shared by the tests that read its figures."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "load_tests.bench", "--quick", "--json", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = orjson.loads(path.read_bytes())
    report["stdout"] = result.stdout
    return report


def test_a_quick_run_measures_every_case_with_events_per_second(
    quick_report: dict[str, Any],
) -> None:
    results = quick_report["results"]

    assert set(results) == {*RATES, *MEMORY}
    for name in RATES:
        assert results[name]["events_per_s"] > 0, name
        assert results[name]["seconds"] > 0, name


def test_every_replay_reads_the_whole_stream_and_writes_the_same_outputs(
    quick_report: dict[str, Any],
) -> None:
    results = quick_report["results"]
    events = quick_report["config"]["events"]

    for name in REPLAYS:
        assert results[name]["read"] == events, name
        assert results[name]["applied"] == events, name
    assert quick_report["outputs_agree"] is True
    assert results["replay_jsonl_1w"]["interventions"] > 0


def test_the_steps_without_bytewax_decide_what_the_replay_decides(
    quick_report: dict[str, Any],
) -> None:
    results = quick_report["results"]

    assert (
        results["steps_jsonl"]["interventions"]
        == results["replay_jsonl_1w"]["interventions"]
    )


def test_the_quiet_replay_decides_nothing_on_the_same_customers(
    quick_report: dict[str, Any],
) -> None:
    results = quick_report["results"]

    assert results["replay_quiet_jsonl_1w"]["interventions"] == 0
    assert (
        results["replay_quiet_jsonl_1w"]["customers"]
        == results["replay_jsonl_1w"]["customers"]
    )


def test_the_decode_step_alone_decodes_every_event_of_both_formats(
    quick_report: dict[str, Any],
) -> None:
    results = quick_report["results"]
    events = quick_report["config"]["events"]

    assert results["decode_jsonl"]["applied"] == events
    assert results["decode_msgpack"]["applied"] == events


def test_native_cases_run_the_native_kernel_and_pure_cases_the_twin(
    quick_report: dict[str, Any],
) -> None:
    results = quick_report["results"]

    assert results["replay_jsonl_1w"]["kernel"] == "native"
    assert results["replay_msgpack_2w"]["kernel"] == "native"
    assert results["pure_replay_jsonl_1w"]["kernel"] == "pure"
    assert results["kernel_native"]["kernel"] == "native"
    assert results["kernel_pure"]["kernel"] == "pure"
    assert results["memory_native"]["kernel"] == "native"
    assert results["memory_pure"]["kernel"] == "pure"


def test_both_kernels_apply_every_event_and_give_the_same_signals(
    quick_report: dict[str, Any],
) -> None:
    native, pure = (quick_report["results"][f"kernel_{k}"] for k in ("native", "pure"))

    assert native["applied"] == pure["applied"] == quick_report["config"]["events"]
    assert native["customers"] == pure["customers"]
    assert native["signals"] == pure["signals"] > 0


def test_ratios_against_the_naive_flow_and_one_worker_are_reported(
    quick_report: dict[str, Any],
) -> None:
    results = quick_report["results"]

    for name in (*REPLAYS, "kernel_native", "kernel_pure"):
        assert results[name]["vs_naive"] > 0, name
    for name in ("replay_jsonl_2w", "replay_msgpack_2w"):
        assert results[name]["vs_1_worker"] > 0, name


def test_memory_and_a_restored_snapshot_are_measured_for_each_state(
    quick_report: dict[str, Any],
) -> None:
    results = quick_report["results"]
    customers = quick_report["config"]["memory_customers"]

    for name in MEMORY:
        assert results[name]["customers"] == customers
        assert results[name]["bytes_per_customer"] > 0, name
        assert "peak_bytes_per_customer" in results[name]
    for name in ("memory_native", "memory_pure"):
        assert results[name]["snapshot_bytes"] > 0
        assert results[name]["snapshot_ms"] >= 0
        assert results[name]["restore_ms"] >= 0
        assert results[name]["restored_identically"] is True


def test_every_target_has_a_figure_and_a_verdict(
    quick_report: dict[str, Any],
) -> None:
    targets = quick_report["targets"]

    assert [target["target"] for target in targets] == [t[-1] for t in TARGETS]
    for target in targets:
        assert isinstance(target["figure"], int | float), target
        assert isinstance(target["met"], bool), target


def test_the_printed_table_names_the_machine_and_each_target(
    quick_report: dict[str, Any],
) -> None:
    text = quick_report["stdout"]

    assert f"{quick_report['machine']['cpus']} CPUs" in text
    assert "naive bytewax stateful_map per customer" in text
    for _, _, _, label in TARGETS:
        assert label in text


def test_touchstream_bench_refuses_an_unknown_case() -> None:
    result = touchstream("bench", "--quick", "--cases", "replay,warp")

    assert result.returncode == 2
    assert "unknown case warp" in result.stderr


def test_touchstream_bench_runs_the_same_benchmark(tmp_path: Path) -> None:
    path = tmp_path / "kernel.json"

    result = touchstream(
        "bench", "--quick", "--cases", "kernel", "--json", path, timeout=120
    )

    assert result.returncode == 0, result.stderr
    report = orjson.loads(path.read_bytes())
    assert set(report["results"]) == {"kernel_native", "kernel_pure"}
    assert "kernel alone (CustomerTable.apply), native" in result.stdout


def test_the_naive_state_notices_silence_only_at_the_next_inbound_event() -> None:
    hour_ms = 3_600_000

    def message(ts_ms: int) -> Event:
        return Event("e", "t", "c", "s", "wechat", "message", "inbound", ts_ms)

    state, first = naive_update(None, message(0))
    state, soon = naive_update(state, message(47 * hour_ms))
    state, late = naive_update(state, message(200 * hour_ms))

    assert first is None and soon is None
    assert late == ("silence", 95 * hour_ms)
