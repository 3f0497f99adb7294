"""The key of a prompt's leading text: what every turn of one conversation shares.

A chat's next turn resends the whole conversation: the same system prompt and first messages, then more. A
replica that served the last turn holds that prefix in its KV cache (vLLM's automatic prefix caching) and
skips its prefill. The key hashes the first `chars` characters of the prompt as the engine sees it — each
message's role and text, in order — so it is the same on every turn once the conversation is that long, and
the same on every gateway replica. A prompt shorter than `chars` gets no key (least-loaded): its prefill is
short, and its key would change on the next turn anyway.

2048 characters, about 512 tokens at 4 characters a token: long enough that a key is specific to a
conversation rather than to a shared greeting, short enough that a conversation keys from its first turn or two.
"""

from __future__ import annotations

import hashlib

from .shared import MAX_CHUNKS

DEFAULT_PREFIX_CHARS = 2048
_SEPARATOR = "\x1e"  # between messages: "a" + "bc" and "ab" + "c" are different conversations


def _text(content) -> str:
    """A message's text: a string, or the text parts of a list (images and audio have no text to key on)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict)
                       and isinstance(part.get("text"), str))
    return ""


def prompt_text(payload: dict, chars: int) -> str:
    """At most `chars` leading characters of the prompt of a chat or completion request body."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        out, size = [], 0
        for message in messages:
            if not isinstance(message, dict):
                continue
            piece = f"{message.get('role', '')}:{_text(message.get('content'))}{_SEPARATOR}"
            out.append(piece)
            size += len(piece)
            if size >= chars:
                break
        return "".join(out)[:chars]
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]  # several prompts in one request: keyed by the first
    return prompt[:chars] if isinstance(prompt, str) else ""


def chunk_digests(payload: dict | None, chars: int = DEFAULT_PREFIX_CHARS, chunks: int = MAX_CHUNKS) -> list[str]:
    """The digests of the prompt's first whole `chars`-character chunks (at most `chunks`), each covering every
    chunk before it: equal digests, equal prefixes. The first is prefix_key's. A part-filled last chunk has
    none: the next turn fills it differently."""
    if not isinstance(payload, dict):
        return []
    chars = max(1, chars)
    text = prompt_text(payload, chars * chunks)
    out, digest = [], b""
    for start in range(0, len(text) - chars + 1, chars):
        digest = hashlib.blake2b(digest + text[start:start + chars].encode("utf-8", "surrogatepass"),
                                 digest_size=8).digest()
        out.append(digest.hex())
    return out


def prefix_key(payload: dict | None, chars: int = DEFAULT_PREFIX_CHARS) -> str | None:
    """The key of the prompt's first `chars` characters (its first chunk's digest); None for a shorter prompt
    (or no prompt)."""
    first = chunk_digests(payload, chars, chunks=1)
    return first[0] if first else None
