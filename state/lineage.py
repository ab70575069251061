"""Lineage: where a customer's numbers come from.

For each customer, the inputs of its CLV (x, t_x and T in the model's time
unit, its spend, and the parameter set by its data hash and calibration
end), the share of its spend from each source system, and each health
component with its value and weight. ``touchstream explain`` prints it for a
replay's output; the gRPC API serves the same structure.
"""

from __future__ import annotations

from typing import Any

from operators.clv import CustomerValue, ValueModel
from operators.health import Health
from state.record import ROW_FIELDS, Row, format_time, purchase_summary

_FIELD = {name: index for index, name in enumerate(ROW_FIELDS)}


def lineage_json(
    row: Row,
    end_ms: int,
    model: ValueModel | None,
    value: CustomerValue | None,
    health: Health | None,
) -> dict[str, Any]:
    """The explanation of one customer's record at `end_ms`."""
    spend = dict(row[_FIELD["spend_by_source"]])
    total = sum(spend.values())
    return {
        "tenant": row[_FIELD["tenant"]],
        "customer_id": row[_FIELD["customer_id"]],
        "evaluated_at": format_time(end_ms),
        "clv": _clv(row, end_ms, model, value),
        "spend_by_source": {
            source: {"spend": amount, "share": amount / total if total else None}
            for source, amount in sorted(spend.items())
        },
        "health": None if health is None else _health(health),
    }


def _clv(
    row: Row, end_ms: int, model: ValueModel | None, value: CustomerValue | None
) -> dict[str, Any] | None:
    purchases = purchase_summary(row, end_ms)
    if model is None or value is None or purchases is None:
        return None
    repeats, recency_days, age_days, mean_value = purchases
    params = model.params
    return {
        "inputs": {
            "x": repeats,
            "t_x": recency_days / model.unit_days,
            "T": age_days / model.unit_days,
            "time_unit": params.time_unit,
            "total_spend": row[_FIELD["first_day_spend"]] + row[_FIELD["repeat_spend"]],
            "monetary_mean": mean_value,
        },
        "params": {
            "data_sha256": params.data_sha256,
            "calibration_end": params.calibration_end,
            "bgnbd": {
                "r": params.bgnbd.r,
                "alpha": params.bgnbd.alpha,
                "a": params.bgnbd.a,
                "b": params.bgnbd.b,
            },
            "gamma_gamma": {
                "p": params.gamma_gamma.p,
                "q": params.gamma_gamma.q,
                "v": params.gamma_gamma.v,
            },
        },
        "horizon": model.horizon,
        "margin": model.margin,
        "annual_discount": model.annual_discount,
        "p_alive": value.p_alive,
        "expected_purchases": value.expected_purchases,
        "expected_order_value": value.expected_order_value,
        "clv": value.clv,
        "value_band": value.value_band,
        "value_bands": list(params.value_bands),
    }


def _health(health: Health) -> dict[str, Any]:
    total_weight = sum(component.weight for component in health.components)
    return {
        "score": health.score,
        "band": health.band,
        "template": health.template,
        "components": [
            {
                "name": component.name,
                "value": component.value,
                "weight": component.weight,
                "points": (
                    100.0 * component.value * component.weight / total_weight
                    if total_weight
                    else 0.0
                ),
            }
            for component in health.components
        ],
    }
