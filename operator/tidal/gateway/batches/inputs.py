"""A batch's input file, checked as OpenAI checks it: one JSON object per line with a unique `custom_id`,
`method` POST, `url` equal to the batch's endpoint and a JSON object `body` naming a `model`. Every
problem is reported with its line number (1-based), so a person can fix the file in one go."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ... import strict_json
from ..openai_api import tokens_to_reserve

MAX_REQUESTS = 50_000
MAX_ERRORS_REPORTED = 100  # a file that is wrong on every line says so a hundred times, not 50,000
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


@dataclass(frozen=True)
class Item:
    line: int
    custom_id: str
    url: str
    body: dict


def _problem(line: int, message: str, param: str | None = None) -> dict:
    return {"code": "invalid_request", "line": line, "message": message, "param": param}


def _check(line_no: int, raw: bytes, endpoint: str) -> Item | dict:
    try:
        obj = strict_json.loads(raw)
    except strict_json.BadJson as err:
        return _problem(line_no, f"line {line_no}: {err}")
    if not isinstance(obj, dict):
        return _problem(line_no, f"line {line_no} must be a JSON object, not {type(obj).__name__}")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _problem(line_no, f"line {line_no}: 'custom_id' must be a non-empty string", "custom_id")
    if obj.get("method") != "POST":
        return _problem(line_no, f"line {line_no}: 'method' is {obj.get('method')!r}; only 'POST' is supported",
                        "method")
    if obj.get("url") != endpoint:
        return _problem(line_no, f"line {line_no}: 'url' is {obj.get('url')!r} but the batch's endpoint is "
                                 f"{endpoint!r}; every line must use the batch's endpoint", "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        return _problem(line_no, f"line {line_no}: 'body' must be a JSON object (the request)", "body")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _problem(line_no, f"line {line_no}: 'body.model' must name a model", "body.model")
    if body.get("stream"):
        return _problem(line_no, f"line {line_no}: 'body.stream' is not supported in a batch", "body.stream")
    return Item(line_no, custom_id, endpoint, body)


@dataclass
class Summary:
    """What validating a whole input leaves in memory: counts, not requests (a 200 MB file stays on disk)."""
    total: int
    per_model: dict[str, int]
    problems: list[dict]
    tokens: int = 0  # what its requests may use, as the rate limiter reserves them (openai_api.tokens_to_reserve)


def _numbered(lines: Iterable[bytes | None]) -> Iterator[tuple[int, bytes | None]]:
    """Lines numbered from 1 (split_lines already leaves out the empty 'line' after a final newline)."""
    return enumerate(lines, start=1)


def validate(lines: Iterable[bytes | None], endpoint: str) -> Summary:
    """Check every line as it streams past (lines: from storage.lines, None for one too long to be a request).
    Memory: each custom_id's line number, the count per model and the first MAX_ERRORS_REPORTED problems."""
    problems: list[dict] = []
    seen: dict[str, int] = {}
    per_model: dict[str, int] = {}
    count = tokens = 0

    def problem(p: dict) -> None:
        if len(problems) < MAX_ERRORS_REPORTED:
            problems.append(p)
    for line_no, raw in _numbered(lines):
        count = line_no
        if line_no > MAX_REQUESTS:
            continue  # counted, not parsed: the file is refused as a whole below
        if raw is None:
            problem(_problem(line_no, f"line {line_no} is longer than 16 MiB, the largest request the gateway takes"))
            continue
        if not raw.strip():
            problem(_problem(line_no, f"line {line_no} is empty"))
            continue
        checked = _check(line_no, raw, endpoint)
        if isinstance(checked, dict):
            problem(checked)
        elif checked.custom_id in seen:
            problem(_problem(line_no, f"line {line_no}: custom_id {checked.custom_id!r} is also on line "
                                      f"{seen[checked.custom_id]}; each must be unique", "custom_id"))
        else:
            seen[checked.custom_id] = line_no
            model = checked.body["model"]
            per_model[model] = per_model.get(model, 0) + 1
            tokens += tokens_to_reserve(endpoint, checked.body, len(raw))
    if count == 0:
        problems.append({"code": "empty_file", "line": None, "message": "the input file has no requests",
                         "param": None})
    if count > MAX_REQUESTS:
        problems.insert(0, {"code": "too_many_requests", "line": None, "param": None,
                            "message": f"the input file has {count:,} requests; a batch may have at most "
                                       f"{MAX_REQUESTS:,}"})
    return Summary(count, per_model, problems[:MAX_ERRORS_REPORTED], tokens)


def requests(lines: Iterable[bytes | None], endpoint: str, skip: frozenset[str] | set[str] = frozenset()
             ) -> Iterator[Item]:
    """The requests of an input that validated, one at a time, leaving out the custom_ids in `skip`."""
    for line_no, raw in _numbered(lines):
        if raw is None or not raw.strip():
            continue
        checked = _check(line_no, raw, endpoint)
        if isinstance(checked, Item) and checked.custom_id not in skip:
            yield checked


def parse_input(data: bytes, endpoint: str) -> tuple[list[Item], list[dict]]:
    """(the requests, the problems) of an input held in memory (small files and tests)."""
    from ...streams import split_lines
    summary = validate(split_lines([data]), endpoint)
    return (list(requests(split_lines([data]), endpoint)) if not summary.problems else []), summary.problems
