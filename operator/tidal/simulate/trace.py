"""Request traces: the Azure LLM CSV format, JSONL with timestamp, input and output tokens, or Mooncake's JSONL
(timestamp in milliseconds, input_length, output_length, and hash_ids: the prompt's 512-token blocks, equal ids
for equal content, which the KV prefix cache of each simulated replica reuses)."""

from __future__ import annotations

import csv
import datetime
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Request:
    arrival: float  # seconds from the first request
    input_tokens: int
    output_tokens: int
    blocks: tuple[int, ...] = ()  # the prompt's blocks (Mooncake's hash_ids), for prefix caching and routing


def _time(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    if "." in text and len(text.split(".")[-1]) > 6:  # 100 ns resolution: Python takes microseconds
        head, frac = text.rsplit(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.datetime.fromisoformat(text).timestamp()


def load_trace(path: Path) -> list[Request]:
    path = Path(path)
    raw: list[tuple] = []
    if path.suffix in (".jsonl", ".ndjson"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if "input_length" in item:  # Mooncake's form: timestamp in milliseconds, input/output_length
                    raw.append((float(item["timestamp"]) / 1000, int(item["input_length"]),
                                int(item["output_length"]), tuple(int(h) for h in item.get("hash_ids") or ())))
                    continue
                raw.append((_time(item.get("timestamp", item.get("time"))),
                            int(item.get("input_tokens", item.get("ContextTokens"))),
                            int(item.get("output_tokens", item.get("GeneratedTokens")))))
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(f"{path}:{n}: need timestamp, input_tokens, output_tokens (or Mooncake's "
                                 f"timestamp in ms, input_length, output_length) ({err})") from None
    else:
        with open(path, newline="") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                try:
                    raw.append((_time(row["TIMESTAMP"]), int(row["ContextTokens"]), int(row["GeneratedTokens"])))
                except (ValueError, TypeError, KeyError) as err:
                    raise ValueError(f"{path}:{n}: need TIMESTAMP, ContextTokens, GeneratedTokens ({err})") from None
    if not raw:
        raise ValueError(f"{path}: no requests")
    raw.sort()
    t0 = raw[0][0]
    return [Request(t - t0, max(1, i), max(1, o), *rest) for t, i, o, *rest in raw]
