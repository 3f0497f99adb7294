"""Pure planning code: what the operator should report and do, from what it observed.

Nothing here performs I/O or reads the clock (`now` is an argument); it imports neither kopf
nor kubernetes (import-linter enforces it), so every branch is unit-testable.
"""
