"""The activator: a request gateway in front of every InferenceService.

It routes each request to a ready replica of its service (fewest requests in flight), passes
streamed responses through, and when a service has no ready replica it holds the request in a
bounded queue, wakes the service through the operator at once, and releases it when a replica
is ready.
"""
