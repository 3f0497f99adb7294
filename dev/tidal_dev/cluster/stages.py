"""KWOK Stages: how simulated nodes and pods move through their lifecycle.

KWOK runs no containers; these Stages tell it which status to write and when.
A pod is Pending with an IP at once, becomes Running and Ready after its cold
start (annotation sim.tidal.dev/cold-start, else the cluster default), and when
deleted stays Terminating for its drain time (sim.tidal.dev/terminate-delay)
before it disappears.
"""

from __future__ import annotations

COLD_START_ANNOTATION = "sim.tidal.dev/cold-start"
REAL_ENGINE_ANNOTATION = "sim.tidal.dev/engine"  # "real": the sim-runtime runs the pod's own command
SERVING_ANNOTATION = "sim.tidal.dev/serving"  # set by the sim-runtime when that real engine passes its probe
TERMINATE_DELAY_ANNOTATION = "sim.tidal.dev/terminate-delay"
# Set by the sim-runtime on a real engine's pod (simserver/init_fetch.py): when its fetch and its engine ran.
FETCH_STARTED_ANNOTATION = "sim.tidal.dev/fetch-started"
FETCH_FINISHED_ANNOTATION = "sim.tidal.dev/fetch-finished"
FETCH_MESSAGE_ANNOTATION = "sim.tidal.dev/fetch-message"  # its termination message
ENGINE_STARTED_ANNOTATION = "sim.tidal.dev/engine-started"

_NODE_CONDITIONS = """\
{{ $now := Now }}
{{ $since := or .metadata.creationTimestamp $now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $since | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
- address: {{ NodeIP | Quote }}
  type: InternalIP
- address: {{ NodeName | Quote }}
  type: Hostname
"""

_NODE_READY = _NODE_CONDITIONS + """\
allocatable:
{{ YAML .status.allocatable 1 }}
capacity:
{{ YAML .status.capacity 1 }}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  kubeletVersion: {{ printf "kwok-%s" Version }}
  containerRuntimeVersion: simulated
phase: Running
"""

_POD_SCHEDULED = """\
{{ $now := Now }}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: PodScheduled
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "False"
  reason: ContainersNotReady
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "False"
  reason: ContainersNotReady
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    waiting:
      reason: ContainerCreating
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Pending
"""

_POD_READY = """\
{{ $now := Now }}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: PodScheduled
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: Ready
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
{{ if .spec.initContainers }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      reason: Completed
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
{{ end }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Running
startTime: {{ $now | Quote }}
"""


# A real engine's pod: the times are those of what really ran (the sim-runtime writes them on the pod, see
# simserver/init_fetch.py): the fetch container's run, the engine's start; PodScheduled keeps its own time.
# So the operator's cold-start phases (weight fetch, engine load) are measured, not made up.
_POD_READY_REAL = """\
{{ $now := Now }}
{{ $scheduled := $now }}
{{ range .status.conditions }}{{ if eq .type "PodScheduled" }}{{ $scheduled = .lastTransitionTime }}{{ end }}{{ end }}
{{ $fetchStarted := index .metadata.annotations "%(fetch_started)s" }}
{{ $fetchFinished := index .metadata.annotations "%(fetch_finished)s" }}
{{ $fetchMessage := or ( index .metadata.annotations "%(fetch_message)s" ) "" }}
{{ $engineStarted := or ( index .metadata.annotations "%(engine_started)s" ) $now }}
conditions:
- type: Initialized
  status: "True"
  lastTransitionTime: {{ or $fetchFinished $scheduled | Quote }}
- type: PodScheduled
  status: "True"
  lastTransitionTime: {{ $scheduled | Quote }}
- type: Ready
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
- type: ContainersReady
  status: "True"
  lastTransitionTime: {{ $now | Quote }}
{{ if .spec.initContainers }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: 0
      reason: Completed
      message: {{ $fetchMessage | Quote }}
      startedAt: {{ or $fetchStarted $scheduled | Quote }}
      finishedAt: {{ or $fetchFinished $scheduled | Quote }}
{{ end }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $engineStarted | Quote }}
{{ end }}
phase: Running
startTime: {{ $scheduled | Quote }}
"""


def _stage(name: str, kind: str, selector: list[dict], nxt: dict, delay: dict | None = None) -> dict:
    spec = {"resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": selector}, "next": nxt}
    if delay:
        spec["delay"] = delay
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}


def _millis(duration: str) -> int:
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
    for suffix in ("ms", "s", "m", "h"):
        if duration.endswith(suffix):
            return int(float(duration[: -len(suffix)]) * units[suffix])
    raise ValueError(f"duration {duration!r}: use a number with ms, s, m or h")


def _annotation(name: str) -> str:
    return f'.metadata.annotations["{name}"]'


def stages(cold_start: str, terminate_delay: str) -> list[dict]:
    not_deleted = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    ready_true = '.status.conditions.[] | select( .type == "Ready" ) | .status'
    return [
        _stage("node-ready", "Node",
               [{"key": ready_true, "operator": "NotIn", "values": ["True"]}],
               {"statusTemplate": _NODE_READY}),
        # Leases keep nodes alive; this refreshes the conditions now and then,
        # like a kubelet's status report.
        _stage("node-heartbeat", "Node",
               [{"key": ready_true, "operator": "In", "values": ["True"]}],
               {"statusTemplate": _NODE_CONDITIONS},
               {"durationMilliseconds": 30_000, "jitterDurationMilliseconds": 40_000}),
        _stage("pod-scheduled", "Pod",
               [not_deleted, {"key": ".spec.nodeName", "operator": "Exists"},
                {"key": ".status.podIP", "operator": "DoesNotExist"}],
               {"statusTemplate": _POD_SCHEDULED,
                "event": {"type": "Normal", "reason": "Pulled", "message": "Simulated container created"}}),
        _stage("pod-ready", "Pod",
               [not_deleted, {"key": ".status.podIP", "operator": "Exists"},
                {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                {"key": _annotation(REAL_ENGINE_ANNOTATION), "operator": "DoesNotExist"}],
               {"statusTemplate": _POD_READY,
                "event": {"type": "Normal", "reason": "Started", "message": "Simulated model server ready"}},
               {"durationMilliseconds": _millis(cold_start),
                "durationFrom": {"expressionFrom": _annotation(COLD_START_ANNOTATION)}}),
        # A pod whose engine runs for real is Ready when that engine passes its readiness probe.
        _stage("pod-ready-real-engine", "Pod",
               [not_deleted, {"key": ".status.podIP", "operator": "Exists"},
                {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
                {"key": _annotation(REAL_ENGINE_ANNOTATION), "operator": "In", "values": ["real"]},
                {"key": _annotation(SERVING_ANNOTATION), "operator": "In", "values": ["true"]}],
               {"statusTemplate": _POD_READY_REAL % {"fetch_started": FETCH_STARTED_ANNOTATION,
                                                      "fetch_finished": FETCH_FINISHED_ANNOTATION,
                                                      "fetch_message": FETCH_MESSAGE_ANNOTATION,
                                                      "engine_started": ENGINE_STARTED_ANNOTATION},
                "event": {"type": "Normal", "reason": "Started", "message": "Real model server ready"}}),
        _stage("pod-delete", "Pod",
               [{"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                {"key": ".metadata.finalizers", "operator": "DoesNotExist"}],
               {"delete": True},
               {"durationMilliseconds": _millis(terminate_delay),
                "durationFrom": {"expressionFrom": _annotation(TERMINATE_DELAY_ANNOTATION)}}),
    ]
