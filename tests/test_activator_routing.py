"""Request routing of the activator."""

import pytest

from tidal.gateway.routing import route


@pytest.mark.parametrize("path,host,expected", [
    ("/ml/llama/v1/completions", "127.0.0.1:8080", ("ml", "llama", "/v1/completions")),
    ("/ml/llama", "localhost", ("ml", "llama", "/")),
    ("/v1/chat/completions", "llama.ml", ("ml", "llama", "/v1/chat/completions")),
    ("/v2/models/resnet/infer", "resnet.vision.svc.cluster.local:80", ("vision", "resnet", "/v2/models/resnet/infer")),
    ("/ml/llama/v1/models", "tidal-activator.tidal-system.svc", ("ml", "llama", "/v1/models")),
    ("/", "127.0.0.1", None),
    ("/Upper/Case/x", None, None),
    ("/../../etc/passwd", None, None),
])
def test_route(path, host, expected):
    assert route(path, host, own=("tidal-system", "tidal-activator")) == expected
