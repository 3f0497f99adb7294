"""InferenceBatch, tidal.dev/v1alpha1: an OpenAI batch as a Kubernetes object, so `kubectl get` and GitOps
see batches. The gateway writes one for every batch created through `/v1/batches` (named after the batch),
and runs one created with kubectl: its input is a file uploaded through `/v1/files` by the API key it
names, and its results are that key's, as if the key had called `POST /v1/batches`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KIND = "InferenceBatch"
PLURAL = "inferencebatches"
SINGULAR = "inferencebatch"
SHORT_NAMES = ["tib"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class InferenceBatchSpec(_Model):
    inputFileId: str = Field(pattern=r"^file-[0-9a-f]{24}$",
                             description="The input: a JSONL file of requests uploaded with purpose `batch` "
                                         "(`POST /v1/files`) by the API key in apiKeySecret, e.g. "
                                         "file-0123456789abcdef01234567.")
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] = Field(
        description="The OpenAI endpoint every line of the input calls.")
    completionWindow: Literal["24h"] = Field("24h", description="Requests not run within this window are "
                                                                "reported as expired.")
    apiKeySecret: str = Field(min_length=1, max_length=253,
                              description="The API key the batch runs as: the name of its Secret in the "
                                          "gateway's namespace. The input file must be this key's, the "
                                          "requests use this key's models, and the results are this key's.")


class InferenceBatchStatus(_Model):
    batchId: str | None = Field(None, description="The batch's id in the OpenAI API (GET /v1/batches/{id}).")
    state: str | None = Field(None, description="validating, in_progress, finalizing, completed, failed, "
                                                "expired, cancelling or cancelled.")
    model: str | None = Field(None, description="The model every request names (empty when they differ).")
    total: int = Field(0, description="Requests in the input.")
    completed: int = Field(0, description="Requests answered successfully so far.")
    failed: int = Field(0, description="Requests that failed so far (see the error file).")
    outputFileId: str | None = Field(None, description="The results (GET /v1/files/{id}/content).")
    errorFileId: str | None = Field(None, description="The failed requests, one line each.")
    message: str | None = Field(None, description="Why the batch failed validation or could not start.")
