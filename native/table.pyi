from collections.abc import Iterable, Sequence
from typing import Any, Protocol

KIND_CODES: dict[str, int]
CHANNEL_COUNT: int
ROW_FORMAT: int
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

class CustomerRecord:
    tenant: str
    customer_id: str
    segment: str | None
    spend_by_source: dict[str, float]
    def __init__(self, tenant: str, customer_id: str) -> None: ...
    def row(self) -> Row: ...
    def load_row(self, row: Row) -> None: ...

class CustomerTable:
    short_window_ms: float
    long_window_ms: float
    def __init__(
        self,
        short_window_ms: float = ...,
        long_window_ms: float = ...,
    ) -> None: ...
    def __len__(self) -> int: ...
    def apply(self, touches: list[Any]) -> int: ...
    def rows(self) -> list[Row]: ...
    def get_row(self, tenant: str, customer_id: str) -> Row | None: ...
    def load_rows(self, rows: Iterable[Sequence[Any]]) -> None: ...
