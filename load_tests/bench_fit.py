"""Benchmark: fit BG/NBD and Gamma-Gamma to the full CDNOW history.

Times Touchstream's fit (native kernels; with --pure also the pure-Python
twins) and, when the `lifetimes` package is installed, its BetaGeoFitter and
GammaGammaFitter on the same customers, and prints each time with its
log-likelihood, so the two can be compared in one run on one machine.

    python -m load_tests.bench_fit [--quick] [--pure] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from stream.replay import CUSTOMERS_FILE, ReplayOptions, run_replay

ROOT = Path(__file__).resolve().parent.parent
CDNOW_MASTER = ROOT / "data" / "cdnow" / "CDNOW_master.txt"
CDNOW_SAMPLE = ROOT / "data" / "cdnow" / "CDNOW_sample.txt"


def customers(path: Path, as_of: str) -> dict[str, np.ndarray]:
    """x, t_x and T in weeks and mean repeat value, from a replay of `path`."""
    with tempfile.TemporaryDirectory() as folder:
        run_replay(
            ReplayOptions(input=path, format="cdnow", out=Path(folder), as_of=as_of)
        )
        lines = (Path(folder) / CUSTOMERS_FILE).read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    return {
        "x": np.array([r["repeat_purchases"] for r in records], dtype=float),
        "t_x": np.array([r["recency_days"] / 7 for r in records]),
        "T": np.array([r["age_days"] / 7 for r in records]),
        "m": np.array([r["monetary_mean"] or 0.0 for r in records]),
    }


def time_touchstream(data: dict[str, np.ndarray], pure: bool) -> dict[str, Any]:
    import scipy.optimize  # noqa: F401  (imported before the clock starts)

    import native
    import operators.clv as clv

    module = "clv_py" if pure else "clv"
    clv._clv = importlib.import_module(f"native.{module}")
    try:
        started = time.perf_counter()
        bgnbd = clv.fit_bgnbd(data["x"], data["t_x"], data["T"])
        middle = time.perf_counter()
        repeat = (data["x"] > 0) & (data["m"] > 0)
        spend = clv.fit_gamma_gamma(data["x"][repeat], data["m"][repeat])
        ended = time.perf_counter()
    finally:
        clv._clv = native.load("clv")
    return {
        "bgnbd_s": middle - started,
        "gamma_gamma_s": ended - middle,
        "bgnbd_ll": bgnbd.log_likelihood,
        "gamma_gamma_ll": spend.log_likelihood,
        "params": [bgnbd.r, bgnbd.alpha, bgnbd.a, bgnbd.b, spend.p, spend.q, spend.v],
    }


def time_lifetimes(data: dict[str, np.ndarray]) -> dict[str, Any] | None:
    try:
        from lifetimes import BetaGeoFitter, GammaGammaFitter
    except ImportError:
        return None
    import scipy.optimize  # noqa: F401  (imported before the clock starts)

    started = time.perf_counter()
    bgf = BetaGeoFitter().fit(data["x"], data["t_x"], data["T"])
    middle = time.perf_counter()
    repeat = (data["x"] > 0) & (data["m"] > 0)
    ggf = GammaGammaFitter().fit(data["x"][repeat], data["m"][repeat])
    ended = time.perf_counter()
    # Both fits scored by the same function: Touchstream's log-likelihood.
    from native import load

    params = [float(v) for v in bgf.params_] + [float(v) for v in ggf.params_]
    ll, _ = load("clv").bgnbd_sum(data["x"], data["t_x"], data["T"], *params[:4])
    return {
        "bgnbd_s": middle - started,
        "gamma_gamma_s": ended - middle,
        "bgnbd_ll": ll,
        "gamma_gamma_ll": None,
        "params": params,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench_fit", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="the 2,357-customer sample only"
    )
    parser.add_argument(
        "--pure", action="store_true", help="also time the pure-Python kernels"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write results")
    args = parser.parse_args(argv)

    path, as_of = (
        (CDNOW_SAMPLE, "1997-09-30") if args.quick else (CDNOW_MASTER, "1998-06-30")
    )
    started = time.perf_counter()
    data = customers(path, as_of)
    summary_s = time.perf_counter() - started
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.python_version()}, "
        f"{platform.processor() or 'cpu'}",
        "input": path.name,
        "customers": len(data["x"]),
        "summary_s": summary_s,
        "touchstream_native": time_touchstream(data, pure=False),
    }
    if args.pure:
        results["touchstream_pure"] = time_touchstream(data, pure=True)
    results["lifetimes"] = time_lifetimes(data)

    print(f"Fit benchmark: {path.name}, {results['customers']:,} customers")
    print(f"  summary by replay   {summary_s:8.2f} s")
    header = f"  {'fitter':<20}{'BG/NBD s':>10}{'GG s':>8}{'BG/NBD log-lik':>17}"
    print(header)
    for name in ("touchstream_native", "touchstream_pure", "lifetimes"):
        row = results.get(name)
        if row is None:
            if name == "lifetimes":
                print(f"  {name:<20}  not installed (pip install lifetimes)")
            continue
        print(
            f"  {name:<20}{row['bgnbd_s']:>10.2f}{row['gamma_gamma_s']:>8.2f}"
            f"{row['bgnbd_ll']:>17.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
