"""InferenceService status: what the operator and the autoscaler report. Written only by Tidal."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Condition(_Model):
    type: str = Field(description="Condition type: `Ready` (serving or able to serve), `Valid` (the spec "
                                  "can be run here), `ScalingActive` (the autoscaler has the metrics it "
                                  "needs), `ScalingLimited` (it wants replicas the node pool cannot "
                                  "place), `Routable` (requests naming its served model through the gateway "
                                  "reach it; False when another service claimed the name first), "
                                  "`Prefetched` (with spec.model.cache.prefetch: every pool node's cache "
                                  "holds the weights).")
    status: str = Field(description="`True`, `False` or `Unknown`.")
    reason: str = Field(description="One CamelCase word a program can match on.")
    message: str = Field("", description="What happened, for a person.")
    lastTransitionTime: str = Field(description="When the status last changed.")
    observedGeneration: int = Field(0, description="The spec generation this condition is about.")


class ScalingDecision(_Model):
    time: str = Field(description="When the decision was made.")
    replicas: int = Field(description="Replicas decided.")
    previousReplicas: int = Field(description="Replicas before the decision.")
    reason: str = Field(description="Why, for example `QueueAboveTarget` or `IdleToZero`.")
    message: str = Field("", description="The numbers behind the decision.")


class BatchStatus(_Model):
    size: int = Field(description="Requests one replica runs at once: the autoscaler's unit of capacity.")
    source: str = Field(description="Where the number comes from: the engine args, or the engine's default on "
                                    "the pool's GPU (a conservative value when the GPU cannot be told).")


class ReplicaAdapters(_Model):
    pod: str = Field(description="The replica's pod.")
    adapters: list[str] = Field(description="The LoRA adapters its engine lists as loaded (GET /v1/models).")


class InferenceServiceStatus(_Model):
    observedGeneration: int = Field(0, description="The spec generation the operator last acted on.")
    conditions: list[Condition] = Field(default_factory=list, description="Current state, by type.")
    replicas: int = Field(0, description="Replicas that exist (ready or starting).")
    readyReplicas: int = Field(0, description="Replicas that pass readiness and serve the model.")
    desiredReplicas: int = Field(0, description="Replicas the autoscaler wants now.")
    queueDepth: float | None = Field(None, description="Requests waiting, last observed from Prometheus.")
    url: str | None = Field(None, description="In-cluster URL of the service.")
    lastActiveTime: str | None = Field(None, description="Last time a request was waiting or running; "
                                                         "scale-to-zero counts idle time from here.")
    lastScaleTime: str | None = Field(None, description="Last time the autoscaler changed replicas.")
    recentIdleGaps: list[int] | None = Field(None, description="The last quiet gaps in seconds (nothing waiting or "
                                                               "running, until the next request), newest last: "
                                                               "what spec.scaling.adaptIdlePeriod learns from.")
    batch: BatchStatus | None = Field(None, description="The batch one replica runs (vLLM: --max-num-seqs).")
    lastColdStartSeconds: float | None = Field(None, description="The last cold start, from the scale-from-zero "
                                               "decision to the first ready replica; sizes the next wake-up.")
    lastColdStartPhases: dict[str, float] | None = Field(
        None, description="Where the last cold start's seconds went, from its first ready replica: scheduling, "
                          "image_pull, weight_fetch (0 when the node's model cache had the weights), engine_load, "
                          "ready (the rest of the operator's clock).")
    poolNodes: int | None = Field(None, description="Nodes in the service's pool (with the model cache on and "
                                                    "an s3://, hf:// or gs:// model).")
    cachedNodes: int | None = Field(None, description="Of poolNodes, those whose model cache holds this model "
                                                      "(labelled model-cache.tidal.dev/<key>): a replica "
                                                      "starting there loads without a download, and new "
                                                      "replicas prefer them.")
    lastDecision: ScalingDecision | None = Field(None, description="The autoscaler's last change and why.")
    replicaAdapters: list[ReplicaAdapters] | None = Field(None, description="With spec.adapters: each ready "
                                                          "replica and the adapters its engine has loaded.")
