"""Fitted model parameters: reading a `touchstream fit` file, or the set
fitted on the bundled CDNOW history when none is given."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import msgspec

from operators.clv import ModelParams
from stream.errors import ConfigError

BUNDLED = "cdnow.json"


def load_params(path: Path | None) -> tuple[ModelParams, str]:
    """Return a parameter set and a line saying where it came from."""
    if path is None:
        data = resources.files("stream.models").joinpath(BUNDLED).read_bytes()
        params = msgspec.json.decode(data, type=ModelParams)
        return params, f"bundled {BUNDLED} ({_describe(params)})"
    try:
        data = path.read_bytes()
    except OSError as ex:
        msg = f"cannot read --params {path}: {ex.strerror}"
        raise ConfigError(msg) from None
    try:
        params = msgspec.json.decode(data, type=ModelParams)
    except (msgspec.ValidationError, msgspec.DecodeError) as ex:
        msg = f"{path} is not a parameter file of `touchstream fit`: {ex}"
        raise ConfigError(msg) from None
    return params, f"{path.name} ({_describe(params)})"


def _describe(params: ModelParams) -> str:
    return (
        f"fitted to {params.calibration_end}, data sha256 "
        f"{params.data_sha256[:12]}, {params.time_unit}s"
    )
