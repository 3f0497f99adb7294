"""`tidal simulate`: replay a request trace through autoscaling policies and count cost and latency.

Deterministic discrete-event simulation of one InferenceService. Tidal's policy is the operator's own
`tidal.autoscaling.decide`, imported, not copied; KEDA + HPA and Knative's KPA are re-implemented from
their documented algorithms (see baselines.py).
"""
