from collections.abc import Iterable, Sequence
from typing import Any, Protocol

KIND_CODES: dict[str, int]
CHANNEL_COUNT: int
ROW_FORMAT: int

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

class CustomerRecord:
    tenant: str
    customer_id: str
    segment: str | None
    def __init__(self, tenant: str, customer_id: str) -> None: ...
    def row(self) -> Row: ...
    def load_row(self, row: Row) -> None: ...

class CustomerTable:
    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def apply(self, touches: list[Any]) -> int: ...
    def rows(self) -> list[Row]: ...
    def get_row(self, tenant: str, customer_id: str) -> Row | None: ...
    def load_rows(self, rows: Iterable[Sequence[Any]]) -> None: ...
