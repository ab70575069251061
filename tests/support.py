"""Helpers shared by the end-to-end and CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
CDNOW_MASTER = ROOT / "data" / "cdnow" / "CDNOW_master.txt"
CDNOW_SAMPLE = ROOT / "data" / "cdnow" / "CDNOW_sample.txt"
CDNOW_SUMMARY = (
    ROOT / "data" / "cdnow" / "cdnow_customers_summary_with_transactions.csv"
)


def event(**fields: Any) -> dict[str, Any]:
    """A valid inbound store order, with `fields` replacing the defaults."""
    base: dict[str, Any] = {
        "event_id": "e1",
        "tenant": "acme",
        "customer_id": "c1",
        "source": "erp",
        "channel": "store",
        "kind": "order",
        "direction": "inbound",
        "ts": "2024-03-01T10:00:00Z",
        "amount": 10.0,
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


def write_jsonl(path: Path, events: list[dict[str, Any] | bytes]) -> Path:
    with path.open("wb") as file:
        for item in events:
            line = item if isinstance(item, bytes) else orjson.dumps(item)
            file.write(line + b"\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def touchstream(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the `touchstream` command as a user would, in a subprocess."""
    command = [sys.executable, "-m", "stream", *map(str, args)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )
