from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

KIND_CODES: dict[str, int]
CHANNEL_COUNT: int
ROW_FORMAT: int
OTHER_SOURCES: str
TABLE_FORMAT: int
SNAPSHOT_MAGIC: bytes
SIGNAL_SILENCE: int
SIGNAL_SILENCE_ENDED: int
DEFAULT_SHORT_WINDOW_MS: float
DEFAULT_LONG_WINDOW_MS: float

Row = tuple[Any, ...]

class Touch(Protocol):
    ts_ms: int
    day: int
    tenant: str
    customer_id: str
    channel: int
    kind: int
    inbound: bool
    amount: float
    segment: str | None
    score: int
    source: str
    event_id: str

class SignalSink(Protocol):
    def append(self, signal: tuple[Any, ...], /) -> None: ...

def check_header(data: bytes) -> int: ...

class CustomerTable:
    short_window_ms: float
    long_window_ms: float
    silence_window_ms: int
    silence_window: Callable[[str, str | None, int], int] | None
    def __init__(
        self,
        short_window_ms: float = ...,
        long_window_ms: float = ...,
        silence_window_ms: int = ...,
        silence_window: Callable[[str, str | None, int], int] | None = ...,
    ) -> None: ...
    def __len__(self) -> int: ...
    def tenant_names(self) -> list[str]: ...
    def memory_bytes(self) -> int: ...
    def apply(
        self,
        touches: list[Any],
        watermark_ms: int = ...,
        ordered: bool = ...,
        signals: SignalSink | None = ...,
    ) -> int: ...
    def fire(self, limit_ms: int, inclusive: bool, signals: SignalSink) -> int: ...
    def next_deadline(self) -> int: ...
    def set_window_state(
        self,
        tenant: str,
        customer_id: str,
        window_clv: float,
        decline_run: int,
        decline_cusum: float,
        at_risk: int,
        health_band: int,
    ) -> None: ...
    def rows(self) -> list[Row]: ...
    def get_row(self, tenant: str, customer_id: str) -> Row | None: ...
    def load_rows(self, rows: Iterable[Sequence[Any]]) -> None: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes | bytearray | memoryview) -> None: ...
