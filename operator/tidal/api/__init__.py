"""The InferenceService API: one pydantic model, the source of the CRD in crds/."""

from .v1alpha1 import GROUP, KIND, PLURAL, VERSION, InferenceServiceSpec  # noqa: F401
