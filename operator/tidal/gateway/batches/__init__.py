"""OpenAI's Files and Batch APIs on the gateway: files kept in a storage backend, batches run by a runner
that sends each request through the gateway itself (so a batch wakes a service at zero, is metered per
key, and is held, retried and routed like any request)."""
