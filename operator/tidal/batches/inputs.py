"""A batch's input file, checked as OpenAI checks it: one JSON object per line with a unique `custom_id`,
`method` POST, `url` equal to the batch's endpoint and a JSON object `body` naming a `model`. Every
problem is reported with its line number (1-based), so a person can fix the file in one go."""

from __future__ import annotations

from dataclasses import dataclass

from .. import strict_json

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


def parse_input(data: bytes, endpoint: str) -> tuple[list[Item], list[dict]]:
    """(the requests, the problems). A file with any problem runs none of its requests."""
    items: list[Item] = []
    problems: list[dict] = []
    seen: dict[str, int] = {}
    lines = data.split(b"\n")
    if lines and lines[-1].strip() == b"":
        lines.pop()
    for line_no, raw in enumerate(lines, start=1):
        if not raw.strip():
            problems.append(_problem(line_no, f"line {line_no} is empty"))
            continue
        checked = _check(line_no, raw, endpoint)
        if isinstance(checked, dict):
            problems.append(checked)
        elif checked.custom_id in seen:
            problems.append(_problem(line_no, f"line {line_no}: custom_id {checked.custom_id!r} is also on line "
                                              f"{seen[checked.custom_id]}; each must be unique", "custom_id"))
        else:
            seen[checked.custom_id] = line_no
            items.append(checked)
    if not lines:
        problems.append({"code": "empty_file", "line": None, "message": "the input file has no requests",
                         "param": None})
    if len(lines) > MAX_REQUESTS:
        problems.append({"code": "too_many_requests", "line": None, "param": None,
                         "message": f"the input file has {len(lines):,} requests; a batch may have at most "
                                    f"{MAX_REQUESTS:,}"})
    return items, problems[:MAX_ERRORS_REPORTED]
