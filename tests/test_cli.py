"""The `touchstream` command as a user runs it: options, exit codes, output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from load_tests.generate import generate_events
from tests.support import CDNOW_SAMPLE, ROOT, event, touchstream, write_jsonl


def test_replay_prints_a_summary_and_exits_0_even_with_rejections(
    tmp_path: Path,
) -> None:
    source = write_jsonl(tmp_path / "e.jsonl", [event(), b"not json", event()])

    result = touchstream("replay", source, "--format", "jsonl", "--out", tmp_path / "o")

    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines()[1:-1])
    assert lines["read"].strip() == "3"
    assert lines["applied"].strip() == "1"
    assert lines["rejected"].strip() == "1"
    assert lines["malformed"].strip() == "1"
    assert lines["duplicates"].strip() == "1"
    assert "events/s" in result.stdout
    assert (tmp_path / "o" / "customers.jsonl").exists()
    assert (tmp_path / "o" / "interventions.jsonl").exists()


def test_replay_json_summary_has_the_four_counts_adding_up(tmp_path: Path) -> None:
    result = touchstream(
        "replay",
        CDNOW_SAMPLE,
        "--format",
        "cdnow",
        "--as-of",
        "1997-09-30",
        "--json",
        "--out",
        tmp_path / "o",
    )

    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    assert summary["read"] == 6_919
    assert (
        summary["applied"]
        + summary["rejected"]
        + summary["duplicates"]
        + summary["after_as_of"]
        == summary["read"]
    )
    assert summary["customers"] == 2_357


def test_no_progress_bar_when_output_is_piped(tmp_path: Path) -> None:
    result = touchstream(
        "--log-level",
        "warning",
        "replay",
        CDNOW_SAMPLE,
        "--format",
        "cdnow",
        "--out",
        tmp_path / "o",
    )

    assert result.returncode == 0
    assert result.stderr == ""


def test_help_explains_every_replay_option() -> None:
    result = touchstream("replay", "--help")

    assert result.returncode == 0
    for option in (
        "--format",
        "--as-of",
        "--presorted",
        "--config",
        "--csv-map",
        "--out",
        "--workers",
    ):
        assert option in result.stdout


def test_bad_usage_exits_2_with_a_message(tmp_path: Path) -> None:
    unknown_option = touchstream("replay", CDNOW_SAMPLE, "--format", "cdnow", "--nope")
    missing_file = touchstream("replay", tmp_path / "absent.txt", "--format", "cdnow")
    bad_format = touchstream("replay", CDNOW_SAMPLE, "--format", "xml")
    bad_as_of = touchstream(
        "replay",
        CDNOW_SAMPLE,
        "--format",
        "cdnow",
        "--as-of",
        "30/09/1997",
        "--out",
        tmp_path / "o",
    )

    for result in (unknown_option, missing_file, bad_format, bad_as_of):
        assert result.returncode == 2, result.stderr
    assert "does not exist" in missing_file.stderr
    assert "expected a date" in bad_as_of.stderr


def test_a_wrong_configuration_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "touchstream.toml"
    config.write_text('[tenants.acme]\ntime_zone = "Mars/Olympus"\n')

    result = touchstream(
        "replay",
        CDNOW_SAMPLE,
        "--format",
        "cdnow",
        "--config",
        config,
        "--out",
        tmp_path / "o",
    )

    assert result.returncode == 2
    assert "tenants.acme.time_zone" in result.stderr


def test_a_folder_in_the_way_of_an_output_is_bad_usage_and_changes_nothing(
    tmp_path: Path,
) -> None:
    out = tmp_path / "o"
    (out / "lineage.jsonl").mkdir(parents=True)
    (out / "customers.jsonl").write_text("old\n")

    result = touchstream("replay", CDNOW_SAMPLE, "--format", "cdnow", "--out", out)

    assert result.returncode == 2
    assert f"{out / 'lineage.jsonl'} is in the way" in result.stderr
    assert (out / "customers.jsonl").read_text() == "old\n"


def test_an_out_that_is_a_file_is_bad_usage(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")

    result = touchstream("replay", CDNOW_SAMPLE, "--format", "cdnow", "--out", blocked)

    assert result.returncode == 2
    assert "is a file" in result.stderr
    assert blocked.read_text() == "not a folder"


def test_a_replay_never_overwrites_its_own_input(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    source = write_jsonl(out / "customers.jsonl", [event()])

    result = touchstream("replay", source, "--format", "jsonl", "--out", out)

    assert result.returncode == 2
    assert source.read_bytes() == write_jsonl(tmp_path / "x", [event()]).read_bytes()


def test_a_killed_worker_fails_the_run_with_exit_1_and_stops_the_others(
    tmp_path: Path,
) -> None:
    source = tmp_path / "big.jsonl"
    with source.open("wb") as file:
        for item in generate_events(400_000, 20_000, seed=3):
            file.write(orjson.dumps(item) + b"\n")
    command = [sys.executable, "-m", "stream", "replay", str(source)]
    command += ["--format", "jsonl", "--presorted", "--workers", "2"]
    command += ["--out", str(tmp_path / "o")]
    run = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    workers: list[str] = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = subprocess.run(
            ["pgrep", "-P", str(run.pid)], capture_output=True, text=True, check=False
        ).stdout.split()

    os.kill(int(workers[0]), signal.SIGKILL)
    _, stderr = run.communicate(timeout=60)

    assert run.returncode == 1
    assert "was killed by SIGKILL" in stderr
    assert "Traceback" not in stderr
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: str) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_a_csv_map_renames_columns_and_fills_constants(tmp_path: Path) -> None:
    source = tmp_path / "orders.csv"
    source.write_text(
        "order_no,client,created,total\n"
        "A-1,00004,1997-01-01T00:00:00Z,29.33\n"
        "A-2,00004,1997-01-18T00:00:00Z,29.73\n"
    )
    mapping = tmp_path / "map.toml"
    mapping.write_text(
        "[columns]\n"
        'event_id = "order_no"\ncustomer_id = "client"\nts = "created"\n'
        'amount = "total"\n'
        "[constants]\n"
        'tenant = "acme"\nsource = "erp"\nchannel = "store"\nkind = "order"\n'
        'direction = "inbound"\n'
    )

    result = touchstream(
        "replay",
        source,
        "--format",
        "csv",
        "--csv-map",
        mapping,
        "--out",
        tmp_path / "o",
    )

    assert result.returncode == 0, result.stderr
    (record,) = [
        orjson.loads(line)
        for line in (tmp_path / "o" / "customers.jsonl").read_bytes().splitlines()
    ]
    assert record["tenant"] == "acme"
    assert record["customer_id"] == "00004"
    assert record["repeat_purchases"] == 1
    assert record["recency_days"] == 17


def test_the_pure_python_kernel_writes_the_same_bytes_as_the_native_one(
    tmp_path: Path,
) -> None:
    args = ("replay", CDNOW_SAMPLE, "--format", "cdnow", "--workers", "2")
    native = touchstream(*args, "--out", tmp_path / "n", env={"TOUCHSTREAM_PURE": "0"})
    pure = touchstream(*args, "--out", tmp_path / "p", env={"TOUCHSTREAM_PURE": "1"})

    assert native.returncode == pure.returncode == 0
    assert "pure kernel" in pure.stdout
    assert (tmp_path / "n" / "interventions.jsonl").stat().st_size > 0
    for name in ("customers.jsonl", "rejected.jsonl", "interventions.jsonl"):
        assert (tmp_path / "n" / name).read_bytes() == (
            tmp_path / "p" / name
        ).read_bytes()


def test_a_horizon_out_of_range_is_refused_before_the_run(tmp_path: Path) -> None:
    out = tmp_path / "o"
    config = tmp_path / "touchstream.toml"
    config.write_text('[value]\nhorizon = "6000w"\n')
    replay = ("replay", CDNOW_SAMPLE, "--format", "cdnow", "--out", out)
    fit = ("fit", CDNOW_SAMPLE, "--format", "cdnow", "--calibration-end", "1997-09-30")

    results = {
        "100000w": touchstream(*replay, "--horizon", "100000w"),
        "0w": touchstream(*replay, "--horizon", "0w"),
        "1s": touchstream(*replay, "--horizon", "1s"),
        "36526d": touchstream(*fit, "--horizon", "36526d"),
    }
    from_config = touchstream(*replay, "--config", config)
    allowed = touchstream(*fit, "--horizon", "36525d", "--out", tmp_path / "p.json")

    for text, result in results.items():
        assert result.returncode == 2, result.stderr
        assert "expected `--horizon` to be at least 1d" in result.stderr
        assert f"got {text!r}" in result.stderr
    assert from_config.returncode == 2
    assert f"{config}: expected `value.horizon`" in from_config.stderr
    assert "got '6000w'" in from_config.stderr
    assert not out.exists()
    assert allowed.returncode == 0, allowed.stderr


def test_a_params_file_the_model_cannot_use_is_refused_naming_the_key(
    tmp_path: Path,
) -> None:
    bundled = orjson.loads((ROOT / "stream" / "models" / "cdnow.json").read_bytes())
    cases = [
        ("bgnbd", "r", -1, "expected `bgnbd.r` to be a finite number > 0"),
        ("bgnbd", "a", 0, "expected `bgnbd.a` to be a finite number > 0"),
        ("gamma_gamma", "p", 1e308, "expected `gamma_gamma.p`"),
        ("gamma_gamma", "q", 1, "expected `gamma_gamma.q` to be a finite number > 1"),
        (None, "value_bands", [30, 10, 50, 90], "expected `value_bands` to be 4"),
        (None, "value_bands", [10, 20], "expected `value_bands` to be 4"),
        (None, "customers", -1, "expected `customers` to be >= 0 - got -1"),
        (None, "time_unit", "month", "time_unit"),
    ]

    for group, key, value, message in cases:
        params = orjson.loads(orjson.dumps(bundled))
        (params if group is None else params[group])[key] = value
        path = tmp_path / "params.json"
        path.write_bytes(orjson.dumps(params))
        out = tmp_path / "o"

        result = touchstream(
            "replay", CDNOW_SAMPLE, "--format", "cdnow", "--params", path, "--out", out
        )

        assert result.returncode == 2, (key, value, result.stderr)
        assert f"{path}" in result.stderr
        assert message in result.stderr, result.stderr
        assert not out.exists()


def test_a_fit_out_that_is_a_folder_or_in_a_missing_folder_is_bad_usage(
    tmp_path: Path,
) -> None:
    fit = ("fit", CDNOW_SAMPLE, "--format", "cdnow", "--calibration-end", "1997-09-30")

    folder = touchstream(*fit, "--out", tmp_path)
    missing = touchstream(*fit, "--out", tmp_path / "absent" / "params.json")

    assert folder.returncode == 2
    assert f"--out {tmp_path} is a folder; expected a file path" in folder.stderr
    assert missing.returncode == 2
    assert f"{tmp_path / 'absent'} does not exist" in missing.stderr
    assert "Fit: finished" not in folder.stderr + missing.stderr


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(
    tmp_path: Path,
) -> None:
    source = write_jsonl(tmp_path / "e.jsonl", [event()])
    out = tmp_path / "o"
    assert (
        touchstream("replay", source, "--format", "jsonl", "--out", out).returncode == 0
    )
    command = [sys.executable, "-m", "stream", "explain", "c1", "--out", str(out)]

    # The pipe is closed before the command, still starting, writes to it.
    run = subprocess.Popen(
        [*command, "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert run.stdout is not None
    run.stdout.close()
    _, stderr = run.communicate(timeout=60)

    assert run.returncode == 0
    assert stderr == b""
