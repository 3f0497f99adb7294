"""InferenceService, tidal.dev/v1alpha1: the spec a user writes.

Every field has a description (it becomes `kubectl explain` text) and a
default where one makes sense. Rules that span fields are CEL rules in the CRD
(`x-kubernetes-validations`), so `kubectl apply` rejects a bad object with a
message that names the field; the same rules are checked here by pydantic, so
an object that somehow got past the apiserver is still refused with a reason.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..engines import ENGINES
from ..routing.prefix import DEFAULT_PREFIX_CHARS
from ..routing.ring import LOAD_FACTOR

GROUP = "tidal.dev"
VERSION = "v1alpha1"
KIND = "InferenceService"
PLURAL = "inferenceservices"
SINGULAR = "inferenceservice"
SHORT_NAMES = ["tis", "tidalsvc"]  # not `isvc`: that is KServe's

URI_SCHEMES = ("hf", "s3", "gs", "pvc")
URI_PATTERN = r"^(hf|s3|gs|pvc)://[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9._\-]+)*/?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
# Extra engine flags must be flags, not shell: a value can be anything except characters a shell
# would act on, though the engine is executed directly (no shell) anyway.
ARG = r"^[^\x00-\x1f;&|`$<>\\]*$"


def rules(*triples: tuple[str, str] | tuple[str, str, str]) -> dict:
    """CEL rules for the CRD: (rule, message[, fieldPath the error points at]) tuples."""
    out = []
    for rule, message, *path in triples:
        out.append({"rule": rule, "message": message, **({"fieldPath": path[0]} if path else {})})
    return {"x-kubernetes-validations": out}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=True)


# One value per engine adapter in tidal/engines: a new adapter file extends the API.
EngineType = Enum("EngineType", {name: name for name in sorted(ENGINES)}, type=str)


class EnvVar(_Model):
    name: str = Field(description="Environment variable name.", pattern=ENV_NAME, max_length=128)
    value: str = Field("", description="Literal value. For secrets use valueFromSecret instead.",
                       max_length=4096)
    valueFromSecret: SecretKeyRef | None = Field(
        None, description="Take the value from a key of a Secret in the same namespace "
                          "(the value is never copied into the Deployment).")


class SecretKeyRef(_Model):
    name: str = Field(description="Secret name, in the InferenceService's namespace.", pattern=NAME,
                      max_length=253)
    key: str = Field(description="Key within the Secret.", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)


class Engine(_Model):
    type: EngineType = Field(description="Model server: " + ", ".join(
        f"`{name}` ({ENGINES[name].summary})" for name in sorted(ENGINES)) + ".")
    image: str | None = Field(None, description="Container image (without tag) to use instead of the "
                                                "engine's default.", max_length=512,
                              pattern=r"^[a-z0-9][a-z0-9._\-/:]*$")
    tag: str | None = Field(None, description="Image tag to use instead of the engine's default.",
                            max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
    args: list[Annotated[str, Field(max_length=1024, pattern=ARG)]] = Field(
        default_factory=list, max_length=64,
        description="Extra command-line arguments appended to the engine's own (for example "
                    "`--max-model-len=8192`). Passed to the engine directly, never through a shell.")
    env: list[EnvVar] = Field(default_factory=list, max_length=64,
                              description="Extra environment variables for the engine container.")
    drainSeconds: int = Field(120, ge=5, le=3600,
                              description="On scale-down or rollout, how long a replica may keep "
                                          "finishing in-flight requests after it stops receiving new ones "
                                          "(the termination grace period).")


class Credentials(_Model):
    secretName: str = Field(description="Secret in the same namespace holding the storage credentials: "
                                        "`HF_TOKEN` for hf://; `AWS_ACCESS_KEY_ID` and "
                                        "`AWS_SECRET_ACCESS_KEY` for s3:// (optionally `AWS_REGION` and, for an "
                                        "S3-compatible store such as MinIO, `AWS_ENDPOINT_URL`); "
                                        "`credentials.json` for gs://.",
                            pattern=NAME, max_length=253)


class ModelCache(_Model):
    prefetch: bool = Field(False, description="Pull the weights into the node cache of every node in the "
                                              "service's pool before the first request (a DaemonSet of one "
                                              "small pod per node, which keeps them from eviction), so even "
                                              "the first wake on any node loads without a download. Needs "
                                              "the operator's model cache on and an s3://, hf:// or gs:// model.")


class _Fetched(_Model):
    """What is fetched from a uri (the model, an adapter): its scheme and the path after it."""

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]

    @property
    def path(self) -> str:
        return self.uri.split("://", 1)[1].rstrip("/")


class Model(_Fetched):
    uri: str = Field(description="Where the weights are: `hf://org/name` (Hugging Face), "
                                 "`s3://bucket/path`, `gs://bucket/path`, or `pvc://claim/path` "
                                 "(mounted read-only instead of downloaded).",
                     max_length=1024, pattern=URI_PATTERN)
    servedName: str | None = Field(None, description="Name clients use in requests (the OpenAI `model` "
                                                     "field, Triton's model name). Default: the last "
                                                     "segment of the uri.",
                                   max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$")
    revision: str | None = Field(None, description="Revision (branch, tag or commit) for hf:// models.",
                                 max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$")
    credentials: Credentials | None = Field(None, description="Secret with credentials to fetch the "
                                                              "model; referenced, never copied.")
    cache: ModelCache | None = Field(None, description="How the node-local model cache treats this model "
                                                       "(docs/model-cache.md).")

    @property
    def served_name(self) -> str:
        return self.servedName or self.path.rsplit("/", 1)[-1]


class Resources(_Model):
    gpus: int = Field(1, ge=0, le=16, description="GPUs per replica (`nvidia.com/gpu`). vLLM uses them "
                                                  "for tensor parallelism.")
    gpuProduct: str | None = Field(None, description="Require this GPU model (node label "
                                                     "`nvidia.com/gpu.product`), e.g. NVIDIA-H100-80GB-HBM3.",
                                   max_length=63, pattern=LABEL_VALUE)
    cpu: str = Field("4", description="CPU request per replica.", pattern=QUANTITY, max_length=32)
    memory: str = Field("32Gi", description="Memory request and limit per replica.", pattern=QUANTITY,
                        max_length=32)
    sharedMemory: str = Field("8Gi", description="Size of /dev/shm (tensor-parallel workers exchange "
                                                 "data through it).", pattern=QUANTITY, max_length=32)


class Toleration(_Model):
    key: str | None = Field(None, description="Taint key to tolerate.", max_length=316)
    operator: str | None = Field(None, description="`Exists` or `Equal`.", pattern="^(Exists|Equal)$")
    value: str | None = Field(None, description="Taint value (with `Equal`).", max_length=63)
    effect: str | None = Field(None, description="`NoSchedule`, `PreferNoSchedule` or `NoExecute`.",
                               pattern="^(NoSchedule|PreferNoSchedule|NoExecute)$")
    tolerationSeconds: int | None = Field(None, description="For NoExecute: how long to stay bound.")


class Placement(_Model):
    nodePool: str | None = Field(None, description="Node pool to run on: nodes labelled "
                                                   "`tidal.dev/pool=<nodePool>`. The GPU taint is tolerated "
                                                   "automatically.", max_length=63, pattern=LABEL_VALUE)
    nodeSelector: dict[str, str] = Field(default_factory=dict, description="Extra node labels to "
                                                                           "require.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32,
                                          description="Extra tolerations.")
    affinity: dict[str, Any] | None = Field(None, description="A Kubernetes Affinity, passed through "
                                                              "to the pods as written.")
    priorityClassName: str | None = Field(None, description="PriorityClass of the pods (default: the one of "
                                                            "`priority`, when set).", max_length=253,
                                          pattern=NAME)
    priority: str | None = Field(None, description="`low`, `normal` (the default) or `high`: in a full node "
                                                   "pool, a lower one's idle replicas make way first for held "
                                                   "requests, and a higher one's never make way for a lower "
                                                   "one's (until those requests have waited half the hold). Its "
                                                   "pods get the chart's PriorityClass `tidal-<priority>`, so the "
                                                   "scheduler's own preemption agrees.",
                                 pattern="^(low|normal|high)$")
    podAnnotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=64,
        description="Annotations for the pods (sidecar injection, secret agents, ...). Tidal's own "
                    "(prometheus.io/*, tidal.dev/*) win on a clash.")


class Scaling(_Model):
    minReplicas: int = Field(0, ge=0, le=1000, description="Fewest replicas. 0 lets an idle model scale "
                                                           "to zero; the activator wakes it on the first "
                                                           "request.")
    maxReplicas: int = Field(4, ge=1, le=1000, description="Most replicas.")
    targetQueueDepth: float = Field(4, gt=0, le=10000,
                                    description="Requests waiting per replica that the autoscaler aims "
                                                "for; more means fewer GPUs and longer waits.")
    idleSecondsBeforeZero: int = Field(300, ge=0, le=86400,
                                       description="Scale to zero only after this many seconds with no "
                                                   "request waiting or running. Zero pays off only for gaps "
                                                   "longer than this plus a cold start (the wake-up costs a "
                                                   "cold start of GPU time and of waiting), so keep it several "
                                                   "times the model's cold start. With adaptIdlePeriod this is "
                                                   "the longest wait.")
    adaptIdlePeriod: bool = Field(True, description="When each of the service's last two quiet gaps outlasted "
                                                    "idleSecondsBeforeZero (every wait ended in a cold start "
                                                    "anyway), scale to zero after the scale-down window or a "
                                                    "cold start, whichever is longer; back to "
                                                    "idleSecondsBeforeZero after a shorter gap. "
                                                    "status.recentIdleGaps shows the gaps.")
    scaleDownStabilizationSeconds: int = Field(60, ge=0, le=3600,
                                               description="Scale down only to the highest replica count "
                                                           "wanted over this window.")
    scaleUpStabilizationSeconds: int = Field(0, ge=0, le=3600,
                                             description="Scale up only to the lowest replica count wanted "
                                                         "over this window (0: at once).")
    query: str | None = Field(None, description="Custom PromQL returning this service's load in "
                                                "requests (one series). `$namespace` and `$name` are "
                                                "replaced. Default: the engine's queue metric summed over "
                                                "the service's pods.", max_length=4096)


class Routing(_Model):
    policy: str = Field("least-loaded", pattern="^(least-loaded|prefix)$",
                        description="How the gateway picks a replica. `least-loaded`: the one with the fewest "
                                    "requests in flight. `prefix`: requests whose prompts begin alike (the turns of "
                                    "one conversation, an agent's calls) go to the same replica, where the engine "
                                    "keeps that prefix in its KV cache and skips its prefill (vLLM's "
                                    "--enable-prefix-caching; some engines always do); no replica takes more than "
                                    f"{LOAD_FACTOR:g}x its share of the requests in flight (the rest go to the "
                                    "next), and prompts shorter than prefixCharacters go least-loaded.")
    prefixCharacters: int = Field(DEFAULT_PREFIX_CHARS, ge=64, le=65536,
                                  description="With `prefix`: the chunk of the prompt (each message's role and "
                                              "text, in order; about 4 characters a token) that picks the "
                                              "replica: its first, or, after a prefix that several "
                                              "conversations share (a system prompt, tool definitions; the "
                                              "gateway learns it, up to 32 chunks deep), the chunk after it.")


SERVED_NAME = r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$"
DEFAULT_MAX_RANK = 16


class Adapter(_Fetched):
    name: str = Field(description="Name clients use for the adapter (the OpenAI `model` field); unique among the "
                                  "service's adapters and unlike its model's servedName.",
                      max_length=256, pattern=SERVED_NAME)
    uri: str = Field(description="Where the adapter's files are (its adapter_config.json and weights), as for "
                                 "model.uri: `hf://`, `s3://`, `gs://` (through the node cache when it is on) or "
                                 "`pvc://claim/path`.", max_length=1024, pattern=URI_PATTERN)
    revision: str | None = Field(None, description="Revision (branch, tag or commit) for an hf:// adapter.",
                                 max_length=128, pattern=SERVED_NAME)
    credentials: Credentials | None = Field(None, description="Secret with credentials to fetch the adapter (keys "
                                                              "as for model.credentials); referenced, never copied.")
    rank: int | None = Field(None, ge=1, le=512, description="The adapter's LoRA rank (`r` in its "
                                                             "adapter_config.json), checked against lora.maxRank "
                                                             "when the object is applied.")


class Lora(_Model):
    maxRank: int = Field(DEFAULT_MAX_RANK, ge=1, le=512,
                         description="The highest adapter rank the replicas accept (the engine sets memory aside for "
                                     "it: keep it no higher than the adapters need).")
    maxAdaptersPerBatch: int = Field(4, ge=1, le=64,
                                     description="Adapters one replica runs in the same batch; requests for others "
                                                 "wait for a slot (more slots take more GPU memory).")


class InferenceServiceSpec(_Model):
    engine: Engine = Field(description="The model server and how to run it.")
    model: Model = Field(description="The model to serve.")
    resources: Resources = Field(default_factory=Resources, description="What each replica gets.")
    placement: Placement = Field(default_factory=Placement, description="Where replicas run.")
    scaling: Scaling = Field(default_factory=Scaling, description="How the autoscaler sizes the service.")
    routing: Routing = Field(default_factory=Routing, description="How the gateway spreads requests over "
                                                                 "the replicas.")
    adapters: list[Adapter] = Field(default_factory=list, max_length=64,
                                    description="LoRA adapters served on this model's replicas, each a model by name "
                                                "at the one endpoint (docs/adapters.md). The service scales on the "
                                                "requests for the model and all its adapters together. Needs an "
                                                "engine that serves adapters: " + ", ".join(
                                                    f"`{n}`" for n in sorted(ENGINES) if ENGINES[n].serves_adapters)
                                                + ".")
    lora: Lora = Field(default_factory=Lora, description="What the replicas set aside for adapters (with adapters).")

    @model_validator(mode="after")
    def _cross_field(self) -> "InferenceServiceSpec":
        if self.scaling.minReplicas > self.scaling.maxReplicas:
            raise ValueError(f"scaling.minReplicas ({self.scaling.minReplicas}) must not exceed "
                             f"scaling.maxReplicas ({self.scaling.maxReplicas})")
        if self.model.revision and self.model.scheme != "hf":
            raise ValueError("model.revision is only meaningful for hf:// models")
        if self.model.cache and self.model.cache.prefetch and self.model.scheme == "pvc":
            raise ValueError("model.cache.prefetch needs an s3://, hf:// or gs:// model; a pvc:// model is "
                             "mounted, not cached per node")
        if self.model.cache and self.model.cache.prefetch and not (self.placement.nodePool
                                                                    or self.placement.nodeSelector):
            raise ValueError("model.cache.prefetch needs placement.nodePool (or placement.nodeSelector): the "
                             "nodes to prefetch onto")
        self._check_adapters()
        names = [e.name for e in self.engine.env]
        if len(names) != len(set(names)):
            raise ValueError(f"engine.env: each name may appear only once; repeated: "
                             f"{', '.join(sorted({n for n in names if names.count(n) > 1}))}")
        return self

    def _check_adapters(self) -> None:
        if not self.adapters:
            return
        if not ENGINES[self.engine.type].serves_adapters:
            raise ValueError(f"adapters: engine.type {self.engine.type!r} serves no LoRA adapters; engines that do: "
                             f"{', '.join(ADAPTER_ENGINES)}")
        names = [a.name for a in self.adapters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"adapters: each name may appear only once; repeated: {', '.join(repeated)}")
        if self.model.served_name in names:
            raise ValueError(f"adapters: {self.model.served_name!r} is the model's own served name; give the adapter "
                             "another name")
        for a in self.adapters:
            if a.rank is not None and a.rank > self.lora.maxRank:
                raise ValueError(f"adapters: {a.name!r} has rank {a.rank}, above lora.maxRank ({self.lora.maxRank}); "
                                 f"raise lora.maxRank to at least {a.rank}")
            if a.revision and a.scheme != "hf":
                raise ValueError(f"adapters: {a.name!r}: revision is only meaningful for an hf:// adapter")


ADAPTER_ENGINES = tuple(sorted(n for n in ENGINES if ENGINES[n].serves_adapters))
# The model's served name when none is given: the uri's last segment (Model.served_name), as CEL can say it.
_DEFAULT_SERVED_IS = "(self.model.uri.endsWith('/' + a.name) || self.model.uri.endsWith('/' + a.name + '/'))"

# CEL rules attached to objects in the generated CRD: (json path of the object, rules).
CEL_RULES = {
    "spec": rules(
        ("!has(self.scaling) || !has(self.scaling.minReplicas) || !has(self.scaling.maxReplicas) || "
         "self.scaling.minReplicas <= self.scaling.maxReplicas",
         "scaling.minReplicas must be less than or equal to scaling.maxReplicas", ".scaling.minReplicas"),
        ("!has(self.model.revision) || self.model.uri.startsWith('hf://')",
         "model.revision is only meaningful for hf:// models", ".model.revision"),
        ("!has(self.model.cache) || !has(self.model.cache.prefetch) || !self.model.cache.prefetch || "
         "!self.model.uri.startsWith('pvc://')",
         "model.cache.prefetch needs an s3://, hf:// or gs:// model (a pvc:// model is mounted, not cached per node)",
         ".model.cache.prefetch"),
        ("!has(self.model.cache) || !has(self.model.cache.prefetch) || !self.model.cache.prefetch || "
         "(has(self.placement) && (has(self.placement.nodePool) || "
         "(has(self.placement.nodeSelector) && self.placement.nodeSelector.size() > 0)))",
         "model.cache.prefetch needs placement.nodePool (or placement.nodeSelector): the nodes to prefetch onto",
         ".model.cache.prefetch"),
        ("!has(self.adapters) || size(self.adapters) == 0 || self.engine.type in " + repr(list(ADAPTER_ENGINES)),
         "adapters need an engine that serves LoRA adapters: " + ", ".join(ADAPTER_ENGINES), ".adapters"),
        ("!has(self.adapters) || self.adapters.all(a, !has(a.rank) || a.rank <= "
         f"(has(self.lora) && has(self.lora.maxRank) ? self.lora.maxRank : {DEFAULT_MAX_RANK}))",
         "adapters: an adapter's rank must not exceed lora.maxRank", ".adapters"),
        ("!has(self.adapters) || self.adapters.all(a, has(self.model.servedName) ? a.name != self.model.servedName : "
         f"!{_DEFAULT_SERVED_IS})",
         "adapters: an adapter may not take the model's own served name", ".adapters"),
        ("!has(self.adapters) || self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
         "adapters: each name may appear only once", ".adapters"),
    ),
    "spec.adapters[]": rules(
        ("!has(self.revision) || self.uri.startsWith('hf://')", "revision is only meaningful for an hf:// adapter",
         ".revision"),
    ),
    "spec.model": rules(
        ("self.uri.startsWith('hf://') || self.uri.startsWith('s3://') || self.uri.startsWith('gs://') || "
         "self.uri.startsWith('pvc://')",
         "model.uri must start with hf://, s3://, gs:// or pvc://", ".uri"),
        ("!self.uri.startsWith('pvc://') || self.uri.size() > 6",
         "model.uri pvc:// needs a claim name: pvc://claim/path", ".uri"),
    ),
    "spec.engine": rules(
        ("!has(self.env) || self.env.all(e, self.env.exists_one(f, f.name == e.name))",
         "engine.env: each name may appear only once", ".env"),
    ),
    "spec.engine.env[]": rules(
        ("!(has(self.value) && self.value != '' && has(self.valueFromSecret))",
         "env: set value or valueFromSecret, not both"),
    ),
}


def parse_spec(spec: dict, scaling_defaults: dict | None = None) -> InferenceServiceSpec:
    """Validate a spec. `scaling_defaults` (the Helm chart's defaultScaling) fills scaling fields the
    object leaves out, before the API's own defaults do."""
    if scaling_defaults:
        spec = {**spec, "scaling": {**scaling_defaults, **(spec.get("scaling") or {})}}
    return InferenceServiceSpec.model_validate(spec)


def resource_name_ok(name: str) -> bool:
    return bool(re.match(NAME, name)) and len(name) <= 52  # leaves room for suffixes on children


EnvVar.model_rebuild()
