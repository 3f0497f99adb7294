"""`tidal usage`: tokens and requests per API key and model, from the gateway's counters.

Reads one or more gateways' /metrics (each replica counts its own requests; the figures are summed) and
prints a table. For history over time, the same counters are in Prometheus:
`sum by (key, model) (increase(tidal_gateway_completion_tokens_total[1d]))`.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

COLUMNS = ("requests", "prompt_tokens", "completion_tokens")
SERIES = {"tidal_gateway_requests_total": "requests", "tidal_gateway_prompt_tokens_total": "prompt_tokens",
          "tidal_gateway_completion_tokens_total": "completion_tokens"}


def summarise(metrics_texts: list[str]) -> dict[tuple[str, str], dict[str, float]]:
    """(key, model) -> requests, prompt and completion tokens, summed over the gateways given."""
    rows: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0.0))
    for text in metrics_texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                column = SERIES.get(sample.name)
                if column:
                    rows[(sample.labels.get("key", "-"), sample.labels.get("model", "-"))][column] += sample.value
    return dict(rows)


def table(rows: dict[tuple[str, str], dict[str, float]]) -> str:
    if not rows:
        return "no requests yet"
    header = ("key", "model", *COLUMNS)
    lines = [[k, m, *(f"{int(v[c]):,}" for c in COLUMNS)] for (k, m), v in sorted(rows.items())]
    totals = ["total", "", *(f"{int(sum(v[c] for v in rows.values())):,}" for c in COLUMNS)]
    widths = [max(len(str(r[i])) for r in [header, *lines, totals]) for i in range(len(header))]

    def fmt(row):
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header), *map(fmt, lines), fmt(totals)])


def fetch(urls: list[str]) -> list[str]:
    return [urllib.request.urlopen(u.rstrip("/") + ("" if u.rstrip("/").endswith("/metrics") else "/metrics"),
                                   timeout=10).read().decode() for u in urls]
