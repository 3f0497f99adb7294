"""The pure pieces of the Kubernetes client: apply bodies a YAML parser reads back exactly, and which
errors mean the apiserver is away (a one-line warning) rather than a bad request (a traceback).
(The real apiserver reads them in tests/cluster/test_fuzz.py.)"""

from __future__ import annotations

import yaml
from hypothesis import given
from hypothesis import strategies as st

from tidal.clients.kube import yaml_safe_json


def test_characters_json_and_yaml_disagree_on():
    for text in ["😀", "\U000e7f97", "\x7f", "\x85", "\u0080", "\\ud83d\\ude00", "\\\\\ud83d"[:3], "tab\there"]:
        assert yaml.safe_load(yaml_safe_json({"v": text})) == {"v": text}


@given(st.recursive(st.text() | st.integers() | st.booleans() | st.none(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                    max_leaves=8))
def test_any_object_survives_the_trip(obj):
    assert yaml.safe_load(yaml_safe_json(obj)) == obj


def test_an_apiserver_away_or_overloaded_is_one_line_and_a_bad_request_is_not():
    import urllib3
    from kubernetes.client.rest import ApiException

    from tidal.clients.kube import unreachable

    refused = urllib3.exceptions.MaxRetryError(None, "/apis/apps/v1/deployments", urllib3.exceptions.NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"))
    assert "unreachable" in unreachable(refused) and "Connection refused" in unreachable(refused)
    assert unreachable(ApiException(status=503, reason="Service Unavailable")) == \
        "Kubernetes API answered 503 Service Unavailable"
    assert unreachable(ApiException(status=429, reason="Too Many Requests")).endswith("429 Too Many Requests")
    assert unreachable(ApiException(status=422, reason="Unprocessable Entity")) is None  # the request's fault
    assert unreachable(KeyError("spec")) is None
