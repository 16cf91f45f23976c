"""From the records of a run to figures: min-median-max, per-round ratios, targets, Markdown.

    python -m benchmarks.report benchmarks/results/<time>.json   # the tables again

A record is one measurement: ``{"round": 2, "workload": "get-c50", "variant": "ours",
"rps": ..., ...}``. Ratios are taken within a round (ours against nginx measured minutes
apart at most, in alternating order) and only then summarised over rounds.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["add_derived", "main", "markdown", "spread", "summary", "targets"]

Record = dict[str, Any]
GET_WORKLOADS = ("get-c1", "get-c50")
TRANSFERS = ("download", "download-chunked", "upload", "upload-chunked")
VARIANT_ORDER = (
    "direct",
    "nginx",
    "minimal",
    "ours",
    "ours-default-pool",
    "ours-pool100",  # the same, in result files before fbcf7d1
)


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """min, median, max and n of ``values``; None when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
    }


def _find(records: Iterable[Record], workload: str, variant: str, rnd: int) -> Record | None:
    for record in records:
        if (record["workload"], record["variant"], record["round"]) == (workload, variant, rnd):
            return record
    return None


def add_derived(records: list[Record]) -> None:
    """Added p50 latency versus direct in the same round, for each small-GET record."""
    for record in records:
        if record["workload"] in GET_WORKLOADS and record["variant"] != "direct":
            direct = _find(records, record["workload"], "direct", record["round"])
            if direct is not None:
                record["added_p50_ms"] = record["p50_ms"] - direct["p50_ms"]


def summary(records: list[Record]) -> dict[str, dict[str, dict[str, Any]]]:
    """{workload: {variant: {metric: spread}}} over rounds, numeric metrics only."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        metrics = out.setdefault(record["workload"], {}).setdefault(record["variant"], {})
        for key, value in record.items():
            if key in ("round", "workload", "variant") or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                metrics.setdefault(key, []).append(value)
    return {
        workload: {
            variant: {key: spread(values) for key, values in metrics.items()}
            for variant, metrics in variants.items()
        }
        for workload, variants in out.items()
    }


def ratio(
    records: list[Record], workload: str, metric: str, num: str, den: str
) -> dict[str, float] | None:
    """``num``/``den`` of ``metric`` within each round, summarised over rounds."""
    values = []
    for record in records:
        if record["workload"] != workload or record["variant"] != num:
            continue
        other = _find(records, workload, den, record["round"])
        a, b = record.get(metric), other.get(metric) if other else None
        if a is not None and b:
            values.append(a / b)
    return spread(values)


def _all(records: list[Record], workloads: Iterable[str], variant: str, metric: str) -> list[Any]:
    wanted = set(workloads)
    return [r.get(metric) for r in records if r["workload"] in wanted and r["variant"] == variant]


def targets(records: list[Record]) -> list[dict[str, Any]]:
    """Each target of issue 6 with its figure (min-median-max over rounds) and verdict."""
    rows: list[dict[str, Any]] = []

    def add(
        name: str, figure: dict[str, float] | None, ok: Callable[[dict[str, float]], bool]
    ) -> None:
        rows.append({"target": name, "figure": figure, "met": ok(figure) if figure else None})

    for workload in GET_WORKLOADS:
        add(
            f"{workload}: requests per proxy CPU-s, ours / minimal ≥ 1.0",
            ratio(records, workload, "requests_per_cpu_s", "ours", "minimal"),
            lambda f: f["median"] >= 1.0,
        )
        add(
            f"{workload}: requests per proxy CPU-s, ours / nginx (about 0.10 expected)",
            ratio(records, workload, "requests_per_cpu_s", "ours", "nginx"),
            lambda f: True,
        )
    add(
        "get-c1: added p50, ours / minimal ≤ 1.0",
        ratio(records, "get-c1", "added_p50_ms", "ours", "minimal"),
        lambda f: f["median"] <= 1.0,
    )
    for kind in TRANSFERS:
        floor = 0.85 if kind.startswith("download") else 1.0
        add(
            f"{kind}: MiB/s, ours / nginx ≥ {floor:.2f}",
            ratio(records, kind, "mib_per_s", "ours", "nginx"),
            lambda f, floor=floor: f["median"] >= floor,  # type: ignore[misc]
        )
    add(
        "RSS growth across 512 MiB each way (ours, MiB) < 16",
        spread(_all(records, TRANSFERS, "ours", "rss_growth_mib")),
        lambda f: f["max"] < 16,
    )
    add(
        "1,000 concurrent slow requests: errors (ours) = 0",
        spread(_all(records, ["slow"], "ours", "errors")),
        lambda f: f["max"] == 0,
    )
    add(
        "token requests per refresh (ours) = 1",
        spread(_all(records, ["refresh"], "ours", "token_requests_per_refresh")),
        lambda f: f["min"] == f["max"] == 1,
    )
    during = _all(records, ["refresh"], "ours", "during_p99_ms")
    outside = _all(records, ["refresh"], "ours", "outside_p99_ms")
    add(
        "refresh invisible in p99: p99 during / outside a refresh (≤ 1.2 taken as invisible)",
        spread([d / o for d, o in zip(during, outside, strict=True) if d and o]),
        lambda f: f["median"] <= 1.2,
    )
    add(
        "stretch: get-c50 requests per proxy CPU-s, ours / minimal ≥ 1.15",
        ratio(records, "get-c50", "requests_per_cpu_s", "ours", "minimal"),
        lambda f: f["median"] >= 1.15,
    )
    add(
        "stretch: get-c1 added p50 (ours, ms) ≤ 0.30",
        spread(_all(records, ["get-c1"], "ours", "added_p50_ms")),
        lambda f: f["median"] <= 0.30,
    )
    return rows


# ------------------------------------------------------------------ Markdown


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(figure: dict[str, float] | None, digits: int = 2) -> str:
    if figure is None:
        return "n/a"
    if figure["n"] == 1 or figure["min"] == figure["max"]:
        return _fmt(figure["median"], digits)
    return (
        f"{_fmt(figure['median'], digits)} "
        f"[{_fmt(figure['min'], digits)}, {_fmt(figure['max'], digits)}]"
    )


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _variants(block: dict[str, Any]) -> list[str]:
    return [v for v in VARIANT_ORDER if v in block] + sorted(set(block) - set(VARIANT_ORDER))


def _candidates_table(records: list[Record]) -> list[str]:
    """Each candidate (a patched copy, ``ours-NAME``) against ours, round by round."""
    names = sorted({r["variant"] for r in records if r["variant"].startswith("ours-")})
    names = [n for n in names if n not in ("ours-default-pool", "ours-pool100")]
    if not names:
        return []
    checks = [
        ("get-c1", "requests_per_cpu_s"),
        ("get-c50", "requests_per_cpu_s"),
        ("get-c50", "rps"),
        ("get-c1", "added_p50_ms"),
        ("download", "mib_per_s"),
        ("download-chunked", "mib_per_s"),
        ("upload", "mib_per_s"),
        ("upload-chunked", "mib_per_s"),
    ]
    checks = [c for c in checks if any(r["workload"] == c[0] for r in records)]
    rows = []
    for name in names:
        cells = [_cell(ratio(records, w, m, name, "ours"), 3) for w, m in checks]
        rows.append([name, *cells])
    header = ["candidate / ours", *(f"{w} {m}" for w, m in checks)]
    return [
        "### Candidates: each patched copy / ours, per round",
        "",
        _table(header, rows),
        "",
    ]


def markdown(results: dict[str, Any]) -> str:
    """The report: every table, median [min, max] over rounds."""
    records: list[Record] = results["records"]
    summ = summary(records)
    meta = results["meta"]
    out = [
        f"Command: `{meta['command']}`  ",
        f"{meta['rounds']} round(s), interleaved; proxy on CPU {meta['proxy_core']}, load and "
        f"upstreams on CPU {meta['load_core']}; {meta['machine']}; Python {meta['python']}, "
        f"aiohttp {meta['aiohttp']}, event loop of ours/minimal: {meta['event_loop']}; "
        f"{meta['nginx']}, {meta['wrk']}; proxy source {meta['proxy_source']} "
        f"(imported from {meta.get('ours_from', '?')}).  ",
        "Cells are median [min, max] over rounds.",
        "",
    ]
    gets = [w for w in GET_WORKLOADS if w in summ]
    if gets:
        out += ["### Small JSON GETs (wrk, one thread)", ""]
        rows = []
        for workload in gets:
            for variant in _variants(summ[workload]):
                m = summ[workload][variant]
                rows.append(
                    [
                        workload,
                        variant,
                        _cell(m.get("rps"), 0),
                        _cell(m.get("p50_ms"), 3),
                        _cell(m.get("p99_ms"), 3),
                        _cell(m.get("added_p50_ms"), 3),
                        _cell(m.get("cpu_us_per_request"), 1),
                        _cell(m.get("requests_per_cpu_s"), 0),
                        _cell(m.get("errors"), 0),
                    ]
                )
        out += [
            _table(
                [
                    "workload",
                    "variant",
                    "requests/s",
                    "p50 ms",
                    "p99 ms",
                    "added p50 ms",
                    "proxy CPU µs/req",
                    "req per proxy CPU-s",
                    "errors",
                ],
                rows,
            ),
            "",
        ]
    kinds = [k for k in TRANSFERS if k in summ]
    if kinds:
        out += ["### 512 MiB transfers (curl)", ""]
        rows = []
        for kind in kinds:
            for variant in _variants(summ[kind]):
                m = summ[kind][variant]
                rows.append(
                    [
                        kind,
                        variant,
                        _cell(m.get("mib_per_s"), 0),
                        _cell(m.get("best_mib_per_s"), 0),
                        _cell(m.get("proxy_cpu_s"), 2),
                        _cell(m.get("rss_before_mib"), 1),
                        _cell(m.get("rss_growth_mib"), 1),
                    ]
                )
        out += [
            _table(
                [
                    "transfer",
                    "variant",
                    "MiB/s (median of repeats)",
                    "best MiB/s",
                    "proxy CPU s",
                    "RSS before MiB",
                    "RSS growth MiB",
                ],
                rows,
            ),
            "",
        ]
    if "slow" in summ:
        out += ["### 1,000 concurrent slow requests (upstream holds each 3 s)", ""]
        rows = []
        for variant in _variants(summ["slow"]):
            m = summ["slow"][variant]
            rows.append(
                [
                    variant,
                    _cell(m.get("errors"), 0),
                    _cell(m.get("wall_s"), 2),
                    _cell(m.get("max_s"), 2),
                    _cell(m.get("listen_overflows"), 0),
                    _cell(m.get("rss_before_mib"), 1),
                    _cell(m.get("rss_peak_mib"), 1),
                    _cell(m.get("proxy_cpu_s"), 2),
                ]
            )
        out += [
            _table(
                [
                    "variant",
                    "errors",
                    "wall s",
                    "slowest s",
                    "SYNs dropped (accept queue full)",
                    "RSS before MiB",
                    "RSS peak MiB",
                    "proxy CPU s",
                ],
                rows,
            ),
            "",
        ]
        errors = [r for r in records if r["workload"] == "slow" and r.get("error_kinds")]
        for record in errors:
            out.append(
                f"- {record['variant']}, round {record['round']}: errors {record['error_kinds']}"
            )
        if errors:
            out.append("")
    if "refresh" in summ:
        m = summ["refresh"]["ours"]
        out += [
            "### Token refresh under load (ours; tokens live 4 s, refreshed every 2 s)",
            "",
            _table(
                [
                    "requests/s",
                    "refreshes",
                    "token requests",
                    "per refresh",
                    "p50 / p99 / max ms during a refresh",
                    "p50 / p99 / max ms outside",
                    "requests during / outside",
                    "errors",
                ],
                [
                    [
                        _cell(m.get("rps"), 0),
                        _cell(m.get("refreshes"), 0),
                        _cell(m.get("token_requests"), 0),
                        _cell(m.get("token_requests_per_refresh"), 2),
                        " / ".join(
                            _cell(m.get(k), 2)
                            for k in ("during_p50_ms", "during_p99_ms", "during_max_ms")
                        ),
                        " / ".join(
                            _cell(m.get(k), 2)
                            for k in ("outside_p50_ms", "outside_p99_ms", "outside_max_ms")
                        ),
                        f"{_cell(m.get('during_n'), 0)} / {_cell(m.get('outside_n'), 0)}",
                        _cell(m.get("errors"), 0),
                    ]
                ],
            ),
            "",
        ]
    out += _candidates_table(records)
    out += ["### Against the targets of issue 6", ""]
    rows = []
    for row in results["targets"]:
        verdict = {True: "met", False: "**not met**", None: "not measured"}[row["met"]]
        rows.append([row["target"], _cell(row["figure"], 2), verdict])
    out += [_table(["target", "figure: median [min, max]", "verdict"], rows), ""]
    out += ["### Noise: the spread of direct across rounds", ""]
    rows = []
    for workload, metric, digits in (
        ("get-c1", "rps", 0),
        ("get-c50", "rps", 0),
        ("get-c1", "p50_ms", 3),
        ("download", "mib_per_s", 0),
        ("upload", "mib_per_s", 0),
    ):
        figure = summ.get(workload, {}).get("direct", {}).get(metric)
        if figure:
            width = (figure["max"] - figure["min"]) / figure["median"] * 100
            rows.append([workload, metric, _cell(figure, digits), f"{width:.1f} %"])
    if rows:
        out += [
            _table(
                ["workload", "figure", "direct: median [min, max]", "(max - min) / median"], rows
            ),
            "",
        ]
    foreign = [r["foreign_load"] for r in records if r.get("foreign_load") is not None]
    if foreign:
        figure = spread(foreign)
        assert figure is not None
        out += [
            "Other processes on the proxy's core during the small-GET measurements (CPU "
            "seconds per second, from /proc/stat less the proxy's own): "
            f"{_cell(figure, 3)} over {figure['n']} measurements.",
            "",
        ]
    return "\n".join(out)


def main() -> int:
    """Print the Markdown of a result file again (after the report itself has changed)."""
    if len(sys.argv) != 2:
        print("usage: python -m benchmarks.report RESULTS.json", file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as file:
        results = json.load(file)
    add_derived(results["records"])
    results["targets"] = targets(results["records"])
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
