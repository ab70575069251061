"""`touchstream fit`: maximum-likelihood BG/NBD and Gamma-Gamma parameters
from an event file, with the value bands of the fitted customers.

The customers' (x, t_x, T, mean value) come from a replay of the file as of
the calibration end, through the same dataflow as any replay, so the fit
sees exactly the records the engine keeps.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from operators.clv import (
    DAYS_PER_UNIT,
    ModelParams,
    TimeUnit,
    ValueModel,
    fit_bgnbd,
    fit_gamma_gamma,
)
from operators.decode import Format
from state.record import format_time
from stream.config import Config, CsvMap, parse_time
from stream.errors import UsageError
from stream.params import horizon_days
from stream.replay import CUSTOMERS_FILE, ReplayOptions, run_replay

log = logging.getLogger(__name__)

BAND_QUANTILES = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class FitOptions:
    """What `touchstream fit` was asked to do."""

    input: Path
    format: Format
    calibration_end: str
    time_unit: TimeUnit = "week"
    config: Config = field(default_factory=Config)
    csv_map: CsvMap | None = None
    workers: int = 1
    horizon: str | None = None


def run_fit(options: FitOptions) -> ModelParams:
    """Fit both models on the file's customers as of the calibration end."""
    started = time.perf_counter()
    horizon = horizon_days(options.horizon, options.config)
    with tempfile.TemporaryDirectory(prefix="touchstream-fit-") as folder:
        run_replay(
            ReplayOptions(
                input=options.input,
                format=options.format,
                out=Path(folder),
                config=options.config,
                as_of=options.calibration_end,
                csv_map=options.csv_map,
                workers=options.workers,
            )
        )
        data = (Path(folder) / CUSTOMERS_FILE).read_bytes()
    records = [
        record
        for record in msgspec.json.decode(b"[" + b",".join(data.splitlines()) + b"]")
        if record["first_purchase_at"] is not None
    ]
    if not records:
        msg = f"{options.input} has no orders up to {options.calibration_end}"
        raise UsageError(msg)

    unit_days = DAYS_PER_UNIT[options.time_unit]
    x = np.array([record["repeat_purchases"] for record in records], dtype=float)
    t_x = np.array([record["recency_days"] for record in records]) / unit_days
    age = np.array([record["age_days"] for record in records]) / unit_days
    means = np.array([record["monetary_mean"] or 0.0 for record in records])
    # Gamma-Gamma models positive order values: repeat customers whose
    # repeat transactions are worth nothing (free items) are left out.
    repeat = (x > 0) & (means > 0)
    bgnbd = fit_bgnbd(x, t_x, age)
    if not repeat.any():
        msg = f"{options.input} has no repeat customer with a positive order value"
        raise UsageError(msg)
    gamma_gamma = fit_gamma_gamma(x[repeat], means[repeat])

    end_ms = parse_time(
        options.calibration_end, options.config.tenant_defaults.time_zone
    )
    params = ModelParams(
        time_unit=options.time_unit,
        calibration_end=format_time(end_ms) or "",
        data_sha256=_sha256(options.input),
        bgnbd=bgnbd,
        gamma_gamma=gamma_gamma,
        value_bands=[],
        customers=len(records),
        repeat_customers=int((x > 0).sum()),
    )
    value = options.config.value
    model = ValueModel(
        params, horizon, margin=value.margin, annual_discount=value.annual_discount
    )
    clvs = [
        model.evaluate(
            record["repeat_purchases"],
            record["recency_days"],
            record["age_days"],
            record["monetary_mean"],
        ).clv
        for record in records
    ]
    bands = [float(cut) for cut in np.quantile(clvs, BAND_QUANTILES)]
    log.info(
        "Fit: finished customers=%d repeat_customers=%d took_ms=%d",
        params.customers,
        params.repeat_customers,
        round((time.perf_counter() - started) * 1000),
    )
    return msgspec.structs.replace(params, value_bands=bands)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
