"""Fitted model parameters: reading a `touchstream fit` file, or the set
fitted on the bundled CDNOW history when none is given, and the horizon
they are evaluated over."""

from __future__ import annotations

import logging
import math
from importlib import resources
from pathlib import Path

import msgspec

from operators.clv import MAX_HORIZON_DAYS, ModelParams, ValueSettings
from stream.config import Config, parse_duration
from stream.errors import ConfigError, UsageError
from stream.watch import FileWatch

log = logging.getLogger(__name__)

BUNDLED = "cdnow.json"
MS_PER_DAY = 86_400_000
# The fit keeps every parameter within e**15 (3.3e6); far larger values
# overflow the value kernels into a CLV that is not a number.
MAX_PARAMETER = 1e12
# The cut-offs between value bands 1 to 5.
VALUE_BAND_CUTS = 4


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
    _check(params, path)
    return params, f"{path.name} ({_describe(params)})"


def horizon_days(
    option: str | None, config: Config, config_path: Path | None = None
) -> float:
    """The CLV horizon in days: `option` (``--horizon``), else the
    configuration's ``value.horizon``, refused unless it is from one day to
    the 100 years the model can evaluate."""
    if option is not None:
        return _horizon_days(option, "--horizon")
    try:
        return _horizon_days(config.value.horizon, "value.horizon")
    except UsageError as ex:
        where = "" if config_path is None else f"{config_path}: "
        msg = f"{where}{ex}"
        raise ConfigError(msg) from None


def value_settings(
    params: ModelParams,
    config: Config,
    horizon: str | None = None,
    config_path: Path | None = None,
) -> ValueSettings:
    """How a run evaluates CLV: `params` over the horizon (``--horizon``,
    else the configuration's), with the configuration's margin and discount."""
    return ValueSettings(
        params,
        horizon_days=horizon_days(horizon, config, config_path),
        margin=config.value.margin,
        annual_discount=config.value.annual_discount,
    )


class ParamsBook:
    """The value settings in force for a long-running engine: a changed
    parameter file is read again (looked at no more than once a second); one
    that does not validate is refused, and the set in force stays."""

    def __init__(self, path: Path | None, settings: ValueSettings) -> None:
        self.path = path
        self.settings = settings
        self._watch = None if path is None else FileWatch(path)

    def __call__(self) -> ValueSettings:
        if self._watch is not None and self._watch.changed():
            self._reload()
        return self.settings

    def _reload(self) -> None:
        assert self.path is not None
        try:
            params, source = load_params(self.path)
        except ConfigError as ex:
            log.warning("Params: refused path=%s reason=%s", self.path, ex)
            return
        if params == self.settings.params:
            return
        self.settings = msgspec.structs.replace(self.settings, params=params)
        log.info("Params: reloaded path=%s params=%s", self.path, source)


def _horizon_days(text: str, where: str) -> float:
    try:
        days = parse_duration(text) / MS_PER_DAY
    except UsageError as ex:
        msg = f"{ex} at `{where}`"
        raise UsageError(msg) from None
    if not 1 <= days <= MAX_HORIZON_DAYS:
        msg = (
            f"expected `{where}` to be at least 1d and at most 100 years "
            f"({MAX_HORIZON_DAYS:g}d) - got {text!r}"
        )
        raise UsageError(msg)
    return days


def _check(params: ModelParams, path: Path) -> None:
    """Refuse a parameter set the value model cannot evaluate."""
    model, spend = params.bgnbd, params.gamma_gamma
    positive = [
        ("bgnbd.r", model.r, 0),
        ("bgnbd.alpha", model.alpha, 0),
        ("bgnbd.a", model.a, 0),
        ("bgnbd.b", model.b, 0),
        ("gamma_gamma.p", spend.p, 0),
        # The mean order value p v / (q - 1) exists for q > 1 only.
        ("gamma_gamma.q", spend.q, 1),
        ("gamma_gamma.v", spend.v, 0),
    ]
    for key, value, low in positive:
        if not low < value <= MAX_PARAMETER:
            msg = (
                f"{path}: expected `{key}` to be a finite number > {low} and "
                f"at most {MAX_PARAMETER:g} - got {value!r}"
            )
            raise ConfigError(msg)
    bands = params.value_bands
    finite = all(math.isfinite(cut) for cut in bands)
    if len(bands) != VALUE_BAND_CUTS or not finite or bands != sorted(bands):
        msg = (
            f"{path}: expected `value_bands` to be {VALUE_BAND_CUTS} finite "
            f"numbers in non-decreasing order - got {bands!r}"
        )
        raise ConfigError(msg)
    for key, count in (
        ("customers", params.customers),
        ("repeat_customers", params.repeat_customers),
    ):
        if count < 0:
            msg = f"{path}: expected `{key}` to be >= 0 - got {count}"
            raise ConfigError(msg)


def _describe(params: ModelParams) -> str:
    return (
        f"fitted to {params.calibration_end}, data sha256 "
        f"{params.data_sha256[:12]}, {params.time_unit}s"
    )
