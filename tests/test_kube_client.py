"""The one piece of the Kubernetes client that is pure: apply bodies a YAML parser reads back exactly.
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
