"""Health score, templates, lineage and `touchstream explain`."""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import pytest

from operators.clv import CustomerValue
from operators.events import CHANNEL_CODES, KIND_CODES
from operators.health import HealthSettings, HealthTemplate, evaluate_health
from stream.config import Config, health_settings, load_config
from stream.errors import ConfigError
from tests.helpers_unit import make_touch
from tests.support import event, read_jsonl, touchstream, write_jsonl

DAY_MS = 86_400_000
END = 1_000 * DAY_MS
TEMPLATE = HealthTemplate(
    name="test",
    weights={
        "p_alive": 3.0,
        "recency": 2.0,
        "engagement_trend": 1.0,
        "service": 1.0,
        "nps": 1.0,
        "value_trend": 2.0,
    },
    channel_weights=(1.0,) * 8,
    recency_half_life_ms=30 * DAY_MS,
    open_ticket_penalty=0.2,
    complaint_penalty=0.25,
)
SETTINGS = HealthSettings(default=TEMPLATE, short_window_ms=10 * DAY_MS)


def touch(table_module: ModuleType, day: float, kind: str = "message", **fields):  # type: ignore[no-untyped-def]
    ts_ms = round(END - day * DAY_MS)
    return make_touch(
        ts_ms=ts_ms, kind=KIND_CODES[kind], channel=CHANNEL_CODES["app"], **fields
    )


def test_each_component_and_the_score_match_a_hand_calculation(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable(10 * DAY_MS, 90 * DAY_MS)
    table.apply(
        [
            touch(table_module, 400, "order", amount=10.0, event_id="o1"),
            touch(table_module, 100, "message", event_id="m1"),
            touch(table_module, 60, "ticket_opened", event_id="t1"),
            touch(table_module, 50, "ticket_opened", event_id="t2"),
            touch(table_module, 40, "complaint", event_id="c1"),
            touch(table_module, 30, "nps", score=8, event_id="n1"),
        ]
    )
    row = table.get_row("acme", "c1")
    value = CustomerValue(0.6, 0.5, 20.0, 10.0, 3)

    health = evaluate_health(row, END, value, 364.0, SETTINGS)

    parts = {component.name: component.value for component in health.components}
    assert parts["p_alive"] == 0.6
    assert parts["recency"] == pytest.approx(0.5)  # 30 days, half-life 30
    assert parts["service"] == pytest.approx(1 - 2 * 0.2 - 0.25)
    assert parts["nps"] == pytest.approx(0.8)
    # Inbound app touches at 400, 100, 60, 50, 40 and 30 days before the end.
    ages = [400, 100, 60, 50, 40, 30]
    short = sum(math.exp(-age / 10) for age in ages) / 10
    long = sum(math.exp(-age / 90) for age in ages) / 90
    assert parts["engagement_trend"] == pytest.approx(short / long)
    # 0.5 purchases expected in 364 days, against 1 purchase in 400 days.
    assert parts["value_trend"] == pytest.approx((0.5 / 364) / (1 / 400))
    weights = {"p_alive": 3, "recency": 2, "engagement_trend": 1, "service": 1}
    weights |= {"nps": 1, "value_trend": 2}
    score = 100 * sum(parts[n] * w for n, w in weights.items()) / sum(weights.values())
    assert health.score == pytest.approx(score)
    assert health.band == ("red" if score < 40 else "yellow" if score < 70 else "green")


def test_a_customer_without_orders_is_scored_on_what_it_has(
    table_module: ModuleType,
) -> None:
    table = table_module.CustomerTable()
    table.apply([touch(table_module, 0, "message", event_id="m1")])

    health = evaluate_health(table.get_row("acme", "c1"), END, None, 364.0, SETTINGS)

    names = [component.name for component in health.components]
    assert names == ["recency", "engagement_trend", "service"]
    # Touched just now, steady engagement, no service trouble: all 1.
    assert health.score == pytest.approx(100.0)
    assert health.band == "green"


def test_the_bands_follow_the_configured_cut_offs() -> None:
    settings = health_settings(
        load_config_text("[health]\nred_below = 50\ngreen_from = 90\n")
    )

    assert (settings.red_below, settings.green_from) == (50, 90)


@pytest.mark.parametrize(
    "name", ["default", "retail", "saas", "manufacturing", "education"]
)
def test_every_shipped_template_weighs_all_six_components(name: str) -> None:
    settings = health_settings(load_config_text(f'[health]\ntemplate = "{name}"\n'))

    weights = settings.default.weights
    assert set(weights) == {
        "p_alive",
        "recency",
        "engagement_trend",
        "service",
        "nps",
        "value_trend",
    }
    assert all(weight > 0 for weight in weights.values())
    assert settings.default.name == name


def test_a_tenant_can_have_its_own_template() -> None:
    config = load_config_text('[tenants.acme]\nhealth_template = "saas"\n')

    settings = health_settings(config)

    assert settings.template("acme").name == "saas"
    assert settings.template("other").name == "default"


def test_an_unknown_template_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[tenants.acme]\nhealth_template = "bakery"\n')

    with pytest.raises(ConfigError, match=r"tenants\.acme.*bakery"):
        load_config(path)


def test_a_template_file_with_an_unknown_component_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "mine.toml"
    template.write_text("[weights]\np_alive = 1\nmood = 2\n")
    path = tmp_path / "c.toml"
    path.write_text(f'[health]\ntemplate = "{template}"\n')

    with pytest.raises(ConfigError, match="mood"):
        load_config(path)


def load_config_text(text: str) -> Config:
    import msgspec

    return msgspec.toml.decode(text.encode(), type=Config)


def test_lineage_shares_spend_by_source_and_explain_prints_it(tmp_path: Path) -> None:
    source = write_jsonl(
        tmp_path / "e.jsonl",
        [
            event(event_id="1", source="erp", amount=30.0, ts="2024-01-02T10:00:00Z"),
            event(event_id="2", source="shop", amount=10.0, ts="2024-02-02T10:00:00Z"),
            event(event_id="3", source="erp", amount=60.0, ts="2024-03-02T10:00:00Z"),
        ],
    )
    out = tmp_path / "o"
    assert (
        touchstream("replay", source, "--format", "jsonl", "--out", out).returncode == 0
    )

    (lineage,) = read_jsonl(out / "lineage.jsonl")
    shares = {
        name: entry["share"] for name, entry in lineage["spend_by_source"].items()
    }
    assert shares == pytest.approx({"erp": 0.9, "shop": 0.1})
    assert lineage["clv"]["inputs"]["x"] == 2
    assert lineage["clv"]["inputs"]["total_spend"] == 100.0
    assert sum(part["points"] for part in lineage["health"]["components"]) == (
        pytest.approx(lineage["health"]["score"])
    )
    (customer,) = read_jsonl(out / "customers.jsonl")
    assert customer["clv"] == lineage["clv"]["clv"]
    assert customer["health"] == round(lineage["health"]["score"], 2)

    shown = touchstream("explain", "c1", "--out", out)
    missing = touchstream("explain", "nobody", "--out", out)

    assert shown.returncode == 0, shown.stderr
    assert "Spend by source" in shown.stdout
    assert "erp" in shown.stdout and "90.0%" in shown.stdout
    assert "P(alive)" in shown.stdout
    assert missing.returncode == 2
    assert "no customer 'nobody'" in missing.stderr
