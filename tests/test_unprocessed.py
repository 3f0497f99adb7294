"""The gateway's reading of answers a replica gave back unprocessed. The samples are what vLLM 0.32 sent
(tests/test_real_vllm.py produces them for real): a request its engine core saw after the SIGTERM."""

from __future__ import annotations

import json

from tidal.gateway.unprocessed import EMPTY, GENERATING, aborted_unprocessed, stream_verdict


def completion(finish: str | None, tokens: int, text: str = "") -> bytes:
    return json.dumps({"id": "cmpl-1", "object": "text_completion", "model": "tiny-chat",
                       "choices": [{"index": 0, "text": text, "finish_reason": finish}],
                       "usage": {"prompt_tokens": 4, "total_tokens": 4 + tokens, "completion_tokens": tokens}}).encode()


def event(doc: dict | str) -> bytes:
    return b"data: " + (doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()) + b"\n\n"


ROLE = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                        "finish_reason": None}]}
TOKEN = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None,
                                                         "logprobs": None}]}


def test_an_answer_aborted_before_its_first_token_was_not_processed():
    assert aborted_unprocessed(completion("abort", 0))
    chat = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                                                      "finish_reason": "abort"}],
            "usage": {"prompt_tokens": 5, "total_tokens": 5, "completion_tokens": 0}}
    assert aborted_unprocessed(json.dumps(chat).encode())


def test_answers_with_tokens_or_other_endings_are_answers():
    assert not aborted_unprocessed(completion("length", 20, "tide"))
    assert not aborted_unprocessed(completion("abort", 3, "ti"))  # tokens were generated: not safe to repeat
    assert not aborted_unprocessed(completion("stop", 0))
    assert not aborted_unprocessed(b'{"error": {"message": "abort", "type": "BadRequestError"}}')
    assert not aborted_unprocessed(b'"abort" and not JSON')


def test_a_stream_that_ends_before_any_token_is_empty():
    assert stream_verdict(event("[DONE]")) == EMPTY  # a completion stream, as vLLM sends it
    assert stream_verdict(event(ROLE) + event("[DONE]")) == EMPTY  # a chat stream: role, then nothing
    usage = {"object": "chat.completion.chunk", "choices": [],
             "usage": {"prompt_tokens": 5, "total_tokens": 5, "completion_tokens": 0}}
    assert stream_verdict(event(ROLE) + event(usage) + event("[DONE]")) == EMPTY  # with include_usage
    assert stream_verdict(event(usage) + event("[DONE]")) == EMPTY  # the completion stream's
    assert stream_verdict(event(ROLE).replace(b"\n", b"\r\n") + b"data: [DONE]\r\n\r\n") == EMPTY


def test_a_stream_is_generating_at_its_first_token_even_an_empty_piece_of_text():
    assert stream_verdict(event(ROLE) + event(TOKEN)) == GENERATING  # random weights: a partial character
    assert stream_verdict(event({"choices": [{"index": 0, "text": "", "finish_reason": None}]})) == GENERATING
    assert stream_verdict(event({"error": {"message": "boom"}})) == GENERATING  # errors pass through
    counted = {"choices": [], "usage": {"prompt_tokens": 5, "total_tokens": 9, "completion_tokens": 4}}
    assert stream_verdict(event(counted)) == GENERATING


def test_until_an_event_is_complete_the_stream_says_nothing():
    assert stream_verdict(b"") is None
    assert stream_verdict(event(ROLE)) is None
    assert stream_verdict(event(ROLE) + b"data: [DO") is None
    assert stream_verdict(b": keep-alive\n\n") is None


def test_a_stream_whose_first_event_is_the_engines_own_death_was_not_processed():
    """vLLM whose engine core died while draining answers the streams its API server held with one error event
    before any token (seen in the real-vLLM drain test): nothing was generated, another replica takes it. Any
    other error is the request's own answer and passes through."""
    from tidal.engines.base import refusals
    dead = (b'data: {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root '
            b'cause.", "type": "InternalServerError", "code": 500}}\n\n')
    assert stream_verdict(dead, refusals()) == EMPTY
    own = b'data: {"error": {"message": "This model\'s maximum context length is 2048 tokens", "code": 400}}\n\n'
    assert stream_verdict(own, refusals()) == GENERATING
