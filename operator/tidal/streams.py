"""Reading large objects as lines without holding them whole (batch inputs of up to 200 MB)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

READ_CHUNK = 1 << 20
MAX_LINE = 16 << 20  # the gateway's largest request body: a longer line cannot be a request


def split_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE) -> Iterator[bytes | None]:
    """The lines of a stream of chunks, without their line ends (LF or CRLF). A line longer than max_line is
    yielded as None, and skipped without being held: memory stays one chunk plus max_line."""
    rest, skipping = b"", False
    for chunk in chunks:
        rest += chunk
        *complete, rest = rest.split(b"\n")
        for line in complete:
            if skipping:  # the end of a line too long to keep
                skipping = False
                continue
            yield (line[:-1] if line.endswith(b"\r") else line) if len(line) <= max_line else None
        if len(rest) > max_line:
            if not skipping:
                yield None
            rest, skipping = b"", True
    if rest and not skipping:
        yield rest[:-1] if rest.endswith(b"\r") else rest
