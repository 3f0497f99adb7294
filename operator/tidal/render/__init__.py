"""Renderers: pure functions from an InferenceService spec to the Kubernetes objects that run it."""

from .deployment import render_deployment  # noqa: F401
from .service import render_service  # noqa: F401
from .settings import RenderSettings  # noqa: F401
from .network_policy import render_network_policy  # noqa: F401
from .settings import NetworkPolicySettings  # noqa: F401
from .prefetch import render_prefetch, wants_prefetch  # noqa: F401
