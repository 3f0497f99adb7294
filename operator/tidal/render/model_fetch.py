"""How weights reach the engine: an init container per uri scheme, or a PVC mount.

  hf://org/name       -> `hf download org/name [--revision R] --local-dir /models/model`, token from HF_TOKEN
  s3://bucket/path    -> `aws s3 sync s3://bucket/path /models/model`, keys from the Secret
  gs://bucket/path    -> `gcloud storage rsync --recursive gs://bucket/path /models/model`
  pvc://claim/path    -> the claim mounted read-only at /models; the model is /models/path

Credentials are always referenced from the Secret (secretKeyRef / a Secret volume), never copied.

With the node cache on (settings.model_cache), s3://, hf:// and gs:// models are fetched once per node instead: the
init container runs `tidal fetch-model` into the node's cache directory (a hostPath), and the engine mounts
that directory read-only and loads `entries/<key>/model` (modelcache/layout.py). While it runs, the engine
holds a shared lock on the entry's `in-use` file (fd 9, taken by flock(1) before `exec`: the lock lives as long
as the engine's process), so the cache never evicts a model a replica uses. What the engine keeps between
starts (vLLM's compile cache) lives beside the weights, in `engine-cache/<key>`, the one place it may write.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.v1alpha1 import Adapter, Model
from ..modelcache.layout import ENGINE_CACHE, FETCH_CONTAINER, cache_key, in_use_path, node_label, weights_path
from .settings import ModelCacheSettings, RenderSettings

MODELS_DIR = "/models"
DOWNLOAD_DIR = f"{MODELS_DIR}/model"
GCS_KEY_DIR = "/var/run/secrets/tidal/gcs"
CACHE_DIR = "/model-cache"  # the node's cache root, inside the pod
ENGINE_CACHE_DIR = "/engine-cache"
CACHED_SCHEMES = ("s3", "hf", "gs")
# The engine's command runs under this: fd 9 opens the entry's in-use file, flock takes a shared lock on it, and
# exec keeps fd 9 open, so the lock lasts exactly as long as the engine's process (the args are its argv).
HOLD_IN_USE = 'exec 9<"$TIDAL_MODEL_IN_USE" && flock -s 9 && exec "$0" "$@"'


@dataclass(frozen=True)
class ModelVolume:
    volumes: list[dict]
    init_containers: list[dict]
    mount: dict  # how the engine container mounts the models volume
    model_path: str  # the path the engine loads
    more_mounts: tuple[dict, ...] = ()  # the engine's own cache, beside the weights
    env: tuple[dict, ...] = ()
    hold_in_use: bool = False  # run the engine under HOLD_IN_USE
    node_label: str | None = None  # nodes whose cache holds the model carry it (preferred, never required)


def _secret_env(secret: str, key: str, optional: bool = False) -> dict:
    return {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}


def _fetcher(image: str, command: list[str], env: list[dict], mounts: list[dict], security: dict,
             into: dict | None = None) -> dict:
    """`into`: the volume the fetch writes, mounted ({"name": "models", "mountPath": MODELS_DIR} by default)."""
    return {"name": FETCH_CONTAINER, "image": image, "command": command, "env": env,
            "volumeMounts": [into or {"name": "models", "mountPath": MODELS_DIR}] + mounts,
            "securityContext": security,
            # A download tool that fails (aws, hf, gcloud) writes no termination message: its last log lines are
            # the message the operator reads (planning/status.py, fetch_failure) and puts in the condition.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}}


def _credentials_env(scheme: str, secret: str | None) -> list[dict]:
    if not secret:
        return []
    if scheme == "hf":
        return [_secret_env(secret, "HF_TOKEN")]
    return _s3_env(secret)


def _s3_env(secret: str) -> list[dict]:
    # AWS_ENDPOINT_URL (optional): an S3-compatible store (MinIO, Ceph), read by the aws CLI and `tidal fetch-model`.
    return [_secret_env(secret, "AWS_ACCESS_KEY_ID"), _secret_env(secret, "AWS_SECRET_ACCESS_KEY"),
            *(_secret_env(secret, key, optional=True)
              for key in ("AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL"))]


def _gcs_key(secret: str, volume_name: str = "gcs-key") -> tuple[dict, dict, list[dict]]:
    """The Secret's credentials.json as a file (volume, mount, env): what Google's tools read."""
    volume = {"name": volume_name, "secret": {"secretName": secret,
                                              "items": [{"key": "credentials.json", "path": "credentials.json"}]}}
    mount = {"name": volume_name, "mountPath": GCS_KEY_DIR, "readOnly": True}
    env = [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCS_KEY_DIR}/credentials.json"},
           {"name": "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", "value": f"{GCS_KEY_DIR}/credentials.json"}]
    return volume, mount, env


def cache_fetch_command(source: Model | Adapter, cache: ModelCacheSettings,
                        extra_args: tuple[str, ...] = ()) -> list[str]:
    """`tidal fetch-model` for `source`: what a replica's (or a prefetch pod's) cache fetcher runs."""
    command = ["tidal", "fetch-model", "--uri", source.uri, "--cache-root", CACHE_DIR, "--budget", cache.budget,
               *extra_args]
    return command + ["--revision", source.revision] if source.revision else command


def cache_fetcher(source: Model | Adapter, cache: ModelCacheSettings, container_security: dict,
                  extra_args: tuple[str, ...] = (), key_volume: str = "gcs-key") -> tuple[dict, list[dict]]:
    """The init container that puts `source` into the node's cache with `tidal fetch-model`, and the volumes it
    needs besides the cache itself (a gs:// key)."""
    command = cache_fetch_command(source, cache, extra_args)
    secret = source.credentials.secretName if source.credentials else None
    volumes: list[dict] = []
    env, mounts = [{"name": "HOME", "value": "/tmp"}], [{"name": "tmp", "mountPath": "/tmp"}]
    if source.scheme == "gs" and secret:
        volume, mount, key_env = _gcs_key(secret, key_volume)
        volumes, mounts, env = [volume], mounts + [mount], env + key_env
    else:
        env += _credentials_env(source.scheme, secret)
    fetcher = _fetcher(cache.image, command, env, mounts, container_security,
                       {"name": "model-cache", "mountPath": CACHE_DIR})
    fetcher["resources"] = {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}  # it streams
    return fetcher, volumes


def cached_model_volume(model: Model, cache: ModelCacheSettings, container_security: dict) -> ModelVolume:
    """Fetched once per node into the cache (see the module's docstring)."""
    key = cache_key(model.uri, model.revision)
    fetcher, key_volumes = cache_fetcher(model, cache, container_security)
    return ModelVolume(
        volumes=[{"name": "model-cache", "hostPath": {"path": cache.root, "type": "DirectoryOrCreate"}},
                 *key_volumes],
        init_containers=[fetcher],
        mount={"name": "model-cache", "mountPath": CACHE_DIR, "readOnly": True},
        model_path=weights_path(CACHE_DIR, key),
        more_mounts=({"name": "model-cache", "mountPath": ENGINE_CACHE_DIR, "subPath": f"{ENGINE_CACHE}/{key}"},),
        env=({"name": "TIDAL_MODEL_IN_USE", "value": in_use_path(CACHE_DIR, key)},
             {"name": "VLLM_CACHE_ROOT", "value": ENGINE_CACHE_DIR}),
        hold_in_use=True,
        node_label=node_label(key),
    )


def cache_node_label(model: Model, settings: RenderSettings) -> str | None:
    """The label of the nodes whose cache holds this model; None when the node cache does not take it."""
    if settings.model_cache is None or model.scheme not in CACHED_SCHEMES:
        return None
    return node_label(cache_key(model.uri, model.revision))


def download(source: Model | Adapter, into: str, key_volume: str = "gcs-key") -> tuple[list[str], list[dict], list[dict],
                                                                                     list[dict]]:
    """The command that downloads an hf://, s3:// or gs:// source into `into` with its storage's own tool, and the
    environment, volumes and mounts it needs: (command, env, volumes, mounts)."""
    secret = source.credentials.secretName if source.credentials else None
    scheme, path = source.scheme, source.path
    env: list[dict] = [{"name": "HOME", "value": "/tmp"}]
    volumes: list[dict] = []
    mounts: list[dict] = [{"name": "tmp", "mountPath": "/tmp"}]
    if scheme == "hf":
        command = ["hf", "download", path, "--local-dir", into]
        if source.revision:
            command += ["--revision", source.revision]
        if secret:
            env.append(_secret_env(secret, "HF_TOKEN"))
    elif scheme == "s3":
        command = ["aws", "s3", "sync", f"s3://{path}", into, "--only-show-errors"]
        if secret:
            env += _s3_env(secret)
    elif scheme == "gs":
        command = ["gcloud", "storage", "rsync", "--recursive", f"gs://{path}", into]
        if secret:
            volume, mount, key_env = _gcs_key(secret, key_volume)
            volumes, mounts, env = [volume], mounts + [mount], env + key_env
    else:  # the API's pattern and CEL rule make this unreachable for stored objects
        raise ValueError(f"uri scheme {scheme!r} is not downloaded")
    return command, env, volumes, mounts


def downloader(source: Model | Adapter, into: str, volume: dict, image: str, container_security: dict,
               key_volume: str = "gcs-key") -> tuple[dict, list[dict]]:
    """An init container that downloads `source` into the directory `into` of the mounted `volume` (a
    volumeMount) with its storage's own tool, and the volumes its credentials need."""
    command, env, volumes, mounts = download(source, into, key_volume)
    return _fetcher(image, command, env, mounts, container_security, volume), volumes


def model_volume(model: Model, settings: RenderSettings, container_security: dict) -> ModelVolume:
    scheme, path = model.scheme, model.path
    if settings.model_cache is not None and scheme in CACHED_SCHEMES:
        return cached_model_volume(model, settings.model_cache, container_security)
    if scheme == "pvc":
        claim, _, sub = path.partition("/")
        return ModelVolume(
            volumes=[{"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
            init_containers=[],
            mount={"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            model_path=f"{MODELS_DIR}/{sub}" if sub else MODELS_DIR,
        )
    fetcher, volumes = downloader(model, DOWNLOAD_DIR, {"name": "models", "mountPath": MODELS_DIR},
                                  settings.fetch_images[scheme], container_security)
    return ModelVolume(
        volumes=[{"name": "models", "emptyDir": {}}, *volumes],
        init_containers=[fetcher],
        mount={"name": "models", "mountPath": MODELS_DIR},
        model_path=DOWNLOAD_DIR,
    )
