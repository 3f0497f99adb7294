"""Where weights come from, behind one small interface: list the files (path, size, sha256 where the source
gives one), then read each as a stream of chunks. Memory stays one chunk whatever the model's size.

- s3://bucket/prefix: the S3 API (boto3; endpoint, region and credentials as every AWS SDK reads them:
  AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or an instance role).
- hf://org/name: the Hugging Face Hub's HTTP API (HF_ENDPOINT, HF_TOKEN); a file stored with LFS lists its
  sha256, which the cache checks.
- gs://bucket/prefix: Cloud Storage's JSON API; it lists each object's md5, which the cache checks. Credentials
  as Google's own libraries find them (google-auth: GOOGLE_APPLICATION_CREDENTIALS, a service account's or a
  user's credentials.json, else the node's workload identity); STORAGE_EMULATOR_HOST, as those libraries read
  it, points at an emulator and sends no credentials.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

CHUNK = 8 << 20  # 8 MiB per read: large enough for throughput, small enough that memory stays flat


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the model's root
    size: int
    sha256: str | None = None
    md5: str | None = None  # hex; Cloud Storage lists it for every object not composed of parts


class Source(Protocol):
    def list(self) -> list[RemoteFile]: ...

    def read(self, remote: RemoteFile) -> Iterator[bytes]: ...


class S3Source:
    def __init__(self, path: str, client=None):
        """path: `bucket/prefix` (the uri without s3://)."""
        self.bucket, _, prefix = path.partition("/")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            import boto3
            client = boto3.client("s3")
        self.s3 = client

    def list(self) -> list[RemoteFile]:
        files = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                relative = obj["Key"][len(self.prefix):]
                if relative and not relative.endswith("/"):
                    files.append(RemoteFile(relative, obj["Size"]))
        if not files:
            raise FileNotFoundError(f"s3://{self.bucket}/{self.prefix}: no objects there")
        return files

    def read(self, remote: RemoteFile) -> Iterator[bytes]:
        body = self.s3.get_object(Bucket=self.bucket, Key=self.prefix + remote.path)["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()


class HfSource:
    def __init__(self, repo: str, revision: str | None = None, token: str | None = None,
                 endpoint: str | None = None):
        self.repo, self.revision = repo, revision or "main"
        self.token = token if token is not None else os.environ.get("HF_TOKEN")
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")

    def _open(self, url: str):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)

    def list(self) -> list[RemoteFile]:
        revision = urllib.parse.quote(self.revision, safe="")
        with self._open(f"{self.endpoint}/api/models/{self.repo}/tree/{revision}?recursive=true") as resp:
            tree = json.load(resp)
        return [RemoteFile(item["path"], int(item.get("size", 0)), (item.get("lfs") or {}).get("oid"))
                for item in tree if item.get("type") == "file"]

    def read(self, remote: RemoteFile) -> Iterator[bytes]:
        revision = urllib.parse.quote(self.revision, safe="")
        with self._open(f"{self.endpoint}/{self.repo}/resolve/{revision}/{urllib.parse.quote(remote.path)}") as resp:
            while chunk := resp.read(CHUNK):
                yield chunk


class GcsSource:
    READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"

    def __init__(self, path: str, endpoint: str | None = None):
        """path: `bucket/prefix` (the uri without gs://)."""
        self.bucket, _, prefix = path.partition("/")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        emulator = endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
        if emulator:
            self.endpoint = (emulator if "://" in emulator else f"http://{emulator}").rstrip("/")
            self._credentials = None
        else:
            import google.auth  # only here: an emulator needs no credentials
            self.endpoint = "https://storage.googleapis.com"
            self._credentials, _ = google.auth.default(scopes=[self.READ_ONLY])

    def _open(self, url: str):
        headers = {}
        if self._credentials is not None:
            if not self._credentials.valid:  # fetched once, refreshed when it expires (an hour for most)
                import urllib3
                from google.auth.transport.urllib3 import Request
                self._credentials.refresh(Request(urllib3.PoolManager()))
            headers["Authorization"] = f"Bearer {self._credentials.token}"
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)

    def _object_url(self, name: str) -> str:
        return f"{self.endpoint}/storage/v1/b/{self.bucket}/o/{urllib.parse.quote(name, safe='')}"

    def list(self) -> list[RemoteFile]:
        files, page = [], None
        while True:
            query = {"prefix": self.prefix, "fields": "items(name,size,md5Hash),nextPageToken"}
            if page:
                query["pageToken"] = page
            with self._open(f"{self.endpoint}/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(query)}") as resp:
                answer = json.load(resp)
            for item in answer.get("items", []):
                relative = item["name"][len(self.prefix):]
                if relative and not relative.endswith("/"):
                    md5 = base64.b64decode(item["md5Hash"]).hex() if item.get("md5Hash") else None
                    files.append(RemoteFile(relative, int(item["size"]), md5=md5))
            page = answer.get("nextPageToken")
            if not page:
                break
        if not files:
            raise FileNotFoundError(f"gs://{self.bucket}/{self.prefix}: no objects there")
        return files

    def read(self, remote: RemoteFile) -> Iterator[bytes]:
        with self._open(self._object_url(self.prefix + remote.path) + "?alt=media") as resp:
            while chunk := resp.read(CHUNK):
                yield chunk


def source_for(uri: str, revision: str | None = None) -> Source:
    scheme, _, path = uri.partition("://")
    if scheme == "s3":
        return S3Source(path.rstrip("/"))
    if scheme == "hf":
        return HfSource(path.rstrip("/"), revision)
    if scheme == "gs":
        return GcsSource(path.rstrip("/"))
    raise ValueError(f"{uri}: the node cache fetches s3://, hf:// and gs:// models (pvc:// is mounted)")
