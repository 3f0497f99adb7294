"""The operator: kopf wiring (handlers.py) around a level-triggered reconcile (reconcile.py)."""
