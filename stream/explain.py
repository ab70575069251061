"""`touchstream explain`: a customer's numbers and where they come from,
read from a replay's ``lineage.jsonl``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from stream.errors import UsageError


def find_lineage(out: Path, customer_id: str, tenant: str | None) -> dict[str, Any]:
    """The lineage of one customer in a replay's output folder."""
    path = out / "lineage.jsonl"
    if not path.is_file():
        msg = f"{path} does not exist; run `touchstream replay ... --out {out}` first"
        raise UsageError(msg)
    found = []
    needle = orjson.dumps(customer_id)
    with path.open("rb") as file:
        for line in file:
            if needle not in line:
                continue
            record = orjson.loads(line)
            if record["customer_id"] == customer_id and tenant in (
                None,
                record["tenant"],
            ):
                found.append(record)
    if not found:
        where = f" of tenant {tenant}" if tenant else ""
        msg = f"no customer {customer_id!r}{where} in {path}"
        raise UsageError(msg)
    if len(found) > 1:
        tenants = ", ".join(record["tenant"] for record in found)
        msg = f"customer {customer_id!r} exists in tenants {tenants}; give --tenant"
        raise UsageError(msg)
    result: dict[str, Any] = found[0]
    return result


def format_lineage(lineage: dict[str, Any]) -> str:
    """A readable account of one customer's value and health."""
    lines = [
        f"Customer {lineage['customer_id']} of tenant {lineage['tenant']}, "
        f"evaluated at {lineage['evaluated_at']}",
        "",
    ]
    clv = lineage["clv"]
    if clv is None:
        lines.append("CLV: none (no order yet, or no model parameters)")
    else:
        inputs, params = clv["inputs"], clv["params"]
        unit = inputs["time_unit"]
        model = params["bgnbd"]
        spend = params["gamma_gamma"]
        mean = inputs["monetary_mean"]
        lines += [
            f"CLV {clv['clv']:.2f} over {clv['horizon']:g} {unit}s "
            f"(value band {clv['value_band']} of 5)",
            f"  = margin {clv['margin']:g} x expected order value "
            f"{clv['expected_order_value']:.2f} x discounted expected purchases "
            f"(annual rate {clv['annual_discount']:.0%})",
            f"  expected purchases  {clv['expected_purchases']:.3f} in the next "
            f"{clv['horizon']:g} {unit}s",
            f"  P(alive)            {clv['p_alive']:.4f}",
            f"  inputs              x = {inputs['x']} repeat purchases, "
            f"t_x = {inputs['t_x']:.2f}, T = {inputs['T']:.2f} {unit}s",
            f"  spend               {inputs['total_spend']:.2f} in all; repeat "
            "transactions average " + ("n/a" if mean is None else f"{mean:.2f}"),
            f"  parameters          BG/NBD r={model['r']:.4g} "
            f"alpha={model['alpha']:.4g} a={model['a']:.4g} b={model['b']:.4g}; "
            "Gamma-Gamma "
            f"p={spend['p']:.4g} q={spend['q']:.4g} v={spend['v']:.4g}",
            f"  fitted on           data sha256 {params['data_sha256'][:16]}..., "
            f"calibration end {params['calibration_end']}",
        ]
    sources = lineage["spend_by_source"]
    if sources:
        lines += ["", "Spend by source"]
        for source, entry in sources.items():
            share = entry["share"]
            shown = "n/a" if share is None else f"{share:.1%}"
            lines.append(f"  {source:<20}{entry['spend']:>12.2f}  {shown:>7}")
    health = lineage["health"]
    if health is not None:
        lines += [
            "",
            f"Health {health['score']:.1f} ({health['band']}), template "
            f"{health['template']}",
            f"  {'component':<20}{'value':>8}{'weight':>8}{'points':>8}",
        ]
        for part in health["components"]:
            lines.append(
                f"  {part['name']:<20}{part['value']:>8.3f}{part['weight']:>8.2f}"
                f"{part['points']:>8.1f}"
            )
    return "\n".join(lines) + "\n"
