"""Who a caller of the gRPC API is, and what each role may see.

A tokens file (TOML) maps the SHA-256 of each token to a tenant and a
role; the tokens themselves are never stored::

    [[token]]
    name = "crm-acme"          # shown in the audit log instead of the token
    sha256 = "9f86d08..."      # of the token: `touchstream token` prints both
    tenant = "acme"
    role = "sales"             # sales, finance or admin

Tokens are random 256-bit strings, so one round of SHA-256 is as safe as a
slow password hash here, and cheap enough for every call.

Roles mask fields: ``sales`` sees value bands, trends and actions, never a
money amount (CLV, spend, order values, the band cut-offs) and gets
``reason_redacted`` as the reason; ``finance`` and ``admin`` see amounts;
only ``admin`` may move a subscriber's cursor.
"""

from __future__ import annotations

import hashlib
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from stream.errors import ConfigError

Role = Literal["sales", "finance", "admin"]
ROLES: tuple[Role, ...] = ("sales", "finance", "admin")
Digest = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

# Keys of records, lineage and interventions that hold money, at any depth:
# dropped where they hold a number or a list of numbers (a key such as
# lineage's `clv` section is gone through instead), and `gamma_gamma`, the
# spend model whose scale is money, whole.
MONEY_KEYS = frozenset(
    {
        "amount",
        "clv",
        "clv_before",
        "clv_now",
        "change",
        "expected_order_value",
        "monetary_mean",
        "refund_total",
        "spend",
        "total_spend",
        "value_bands",
        "gamma_gamma",
    }
)


class TokenEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: Name
    sha256: Digest
    tenant: Name
    role: Role


class TokensFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    token: list[TokenEntry] = []


class Identity(msgspec.Struct, frozen=True):
    """An authenticated caller."""

    name: str
    tenant: str
    role: Role

    @property
    def sees_money(self) -> bool:
        return self.role != "sales"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "ts_" + secrets.token_urlsafe(32)


class Tokens:
    """The tokens file, looked up by digest."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._by_digest = {
            entry.sha256: Identity(entry.name, entry.tenant, entry.role)
            for entry in entries
        }

    @classmethod
    def load(cls, path: Path) -> Tokens:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            parsed = msgspec.convert(data, TokensFile)
        except OSError as ex:
            msg = f"cannot read the tokens file {path}: {ex.strerror}"
            raise ConfigError(msg) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as ex:
            msg = f"{path} is not a TOML file: {ex}"
            raise ConfigError(msg) from None
        except msgspec.ValidationError as ex:
            msg = f"{path}: {ex}"
            raise ConfigError(msg) from None
        names = [entry.name for entry in parsed.token]
        if len(set(names)) != len(names):
            msg = f"{path}: token names must be unique - got {sorted(names)}"
            raise ConfigError(msg)
        return cls(parsed.token)

    def __len__(self) -> int:
        return len(self._by_digest)

    def identify(self, token: str) -> Identity | None:
        return self._by_digest.get(token_digest(token))

    def tenants(self) -> list[str]:
        """The tenants these tokens admit, each once."""
        return sorted({identity.tenant for identity in self._by_digest.values()})


def mask_money(value: Any) -> Any:
    """A copy of a JSON value without the money keys, at any depth."""
    if isinstance(value, dict):
        return {
            key: mask_money(item)
            for key, item in value.items()
            if key not in MONEY_KEYS
            or (isinstance(item, dict) and key != "gamma_gamma")
        }
    if isinstance(value, list):
        return [mask_money(item) for item in value]
    return value


def for_role(record: dict[str, Any], identity: Identity) -> dict[str, Any]:
    """A record, lineage or intervention as the caller's role sees it."""
    if identity.sees_money:
        return record
    masked: dict[str, Any] = mask_money(record)
    if "reason_redacted" in masked:
        masked["reason"] = ""
    return masked
