"""How weights reach the engine: an init container per uri scheme, or a PVC mount.

  hf://org/name       -> `hf download org/name [--revision R] --local-dir /models/model`, token from HF_TOKEN
  s3://bucket/path    -> `aws s3 sync s3://bucket/path /models/model`, keys from the Secret
  gs://bucket/path    -> `gcloud storage rsync --recursive gs://bucket/path /models/model`
  pvc://claim/path    -> the claim mounted read-only at /models; the model is /models/path

Credentials are always referenced from the Secret (secretKeyRef / a Secret volume), never copied.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.v1alpha1 import Model
from .settings import RenderSettings

MODELS_DIR = "/models"
DOWNLOAD_DIR = f"{MODELS_DIR}/model"
GCS_KEY_DIR = "/var/run/secrets/tidal/gcs"


@dataclass(frozen=True)
class ModelVolume:
    volumes: list[dict]
    init_containers: list[dict]
    mount: dict  # how the engine container mounts the models volume
    model_path: str  # the path the engine loads


def _secret_env(secret: str, key: str, optional: bool = False) -> dict:
    return {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}


def _fetcher(image: str, command: list[str], env: list[dict], mounts: list[dict], security: dict) -> dict:
    return {"name": "fetch-model", "image": image, "command": command, "env": env,
            "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}] + mounts,
            "securityContext": security,
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}}


def model_volume(model: Model, settings: RenderSettings, container_security: dict) -> ModelVolume:
    secret = model.credentials.secretName if model.credentials else None
    scheme, path = model.scheme, model.path
    if scheme == "pvc":
        claim, _, sub = path.partition("/")
        return ModelVolume(
            volumes=[{"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
            init_containers=[],
            mount={"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            model_path=f"{MODELS_DIR}/{sub}" if sub else MODELS_DIR,
        )
    volumes = [{"name": "models", "emptyDir": {}}]
    env: list[dict] = [{"name": "HOME", "value": "/tmp"}]
    mounts: list[dict] = [{"name": "tmp", "mountPath": "/tmp"}]
    if scheme == "hf":
        command = ["hf", "download", path, "--local-dir", DOWNLOAD_DIR]
        if model.revision:
            command += ["--revision", model.revision]
        if secret:
            env.append(_secret_env(secret, "HF_TOKEN"))
    elif scheme == "s3":
        command = ["aws", "s3", "sync", f"s3://{path}", DOWNLOAD_DIR, "--only-show-errors"]
        if secret:
            env += [_secret_env(secret, "AWS_ACCESS_KEY_ID"), _secret_env(secret, "AWS_SECRET_ACCESS_KEY"),
                    _secret_env(secret, "AWS_SESSION_TOKEN", optional=True),
                    _secret_env(secret, "AWS_DEFAULT_REGION", optional=True)]
    elif scheme == "gs":
        command = ["gcloud", "storage", "rsync", "--recursive", f"gs://{path}", DOWNLOAD_DIR]
        if secret:
            volumes.append({"name": "gcs-key", "secret": {"secretName": secret,
                                                          "items": [{"key": "credentials.json",
                                                                     "path": "credentials.json"}]}})
            mounts.append({"name": "gcs-key", "mountPath": GCS_KEY_DIR, "readOnly": True})
            env += [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCS_KEY_DIR}/credentials.json"},
                    {"name": "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE",
                     "value": f"{GCS_KEY_DIR}/credentials.json"}]
    else:  # the API's pattern and CEL rule make this unreachable for stored objects
        raise ValueError(f"model.uri scheme {scheme!r} is not supported")
    return ModelVolume(
        volumes=volumes,
        init_containers=[_fetcher(settings.fetch_images[scheme], command, env, mounts, container_security)],
        mount={"name": "models", "mountPath": MODELS_DIR},
        model_path=DOWNLOAD_DIR,
    )
