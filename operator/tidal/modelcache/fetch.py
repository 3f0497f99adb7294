"""`tidal fetch-model`: the init container of every replica whose model is cached on its node.

It makes sure the model is in the node's cache (store.py) and says what it did, one line a user can read in
`kubectl logs <pod> -c fetch-model`. A failure exits non-zero with a first line that names the reason
(ModelFetchFailed, CacheTooSmall, CacheFull): the operator reads it from the container's termination message
and reports it as the service's condition. A success says there how long the fetch took (0.0 s for a hit), for
the cold start's weight-fetch phase.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import time
from pathlib import Path

from .layout import ENGINE_CACHE, in_use_path
from .sources import source_for
from .store import CacheFull, CacheStore, CacheTooSmall, FetchFailed, used_with

TERMINATION_LOG = "/dev/termination-log"


def parse_bytes(text: str) -> int:
    """'500Gi', '2G', '1048576' -> bytes (Kubernetes quantity suffixes)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[:-len(suffix)]) * units[suffix])
    return int(text)


def add_fetch_model(sub) -> None:
    fetch = sub.add_parser("fetch-model", help="put a model into this node's cache (the init container of a "
                                               "replica; fetched once per node)")
    fetch.add_argument("--uri", required=True, help="s3://bucket/path or hf://org/name")
    fetch.add_argument("--revision", help="for hf:// models: branch, tag or commit")
    fetch.add_argument("--cache-root", required=True, help="the node's cache directory (a hostPath)")
    fetch.add_argument("--budget", default="500Gi", help="bytes the cache may hold on this node (e.g. 500Gi)")
    fetch.add_argument("--termination-log", default=TERMINATION_LOG,
                       help="where the outcome (a failure's reason, a success's seconds) is written for the "
                            "operator to read")
    fetch.add_argument("--used-with", metavar="BASE_KEY",
                       help="an adapter: the cache key of the base model whose replicas load it (the adapter is "
                            "kept while the base is in use)")
    fetch.add_argument("--hold", action="store_true",
                       help="then hold the model's in-use lock until stopped (the prefetch DaemonSet's pod: a "
                            "prefetched model is never evicted)")
    fetch.set_defaults(func=run)


def _fail(args, reason: str, message: str) -> int:
    text = f"{reason}: {message}"
    print(text, file=sys.stderr, flush=True)
    _report(args, text[:4000])
    return 1


def _report(args, text: str) -> None:
    try:
        Path(args.termination_log).write_text(text)
    except OSError:
        pass  # not in a pod


def run(args: argparse.Namespace) -> int:
    store = CacheStore(Path(args.cache_root), parse_bytes(args.budget))
    started = time.monotonic()  # after start-up: what follows is the fetch (or the hit) itself
    try:
        done = store.ensure(args.uri, args.revision, lambda: source_for(args.uri, args.revision),
                            log=lambda line: print(line, flush=True))
    except CacheTooSmall as err:
        return _fail(args, "CacheTooSmall", str(err))
    except CacheFull as err:
        return _fail(args, "CacheFull", str(err))
    except (FetchFailed, FileNotFoundError, OSError, ValueError) as err:
        return _fail(args, "ModelFetchFailed", f"{args.uri}: {err}")
    except Exception as err:  # the source's own errors (botocore's ClientError, NoCredentialsError, ...)
        return _fail(args, "ModelFetchFailed", f"{args.uri}: {type(err).__name__}: {err}")
    if args.used_with:
        used_with(done.path.parent, args.used_with)
    # Where the engine keeps what it reuses between starts; made here, as the pod's user: the engine may write
    # nowhere else in the cache (its weights are mounted read-only).
    (Path(args.cache_root) / ENGINE_CACHE / done.key).mkdir(parents=True, exist_ok=True)
    took = time.monotonic() - started
    print(f"{'cache hit' if done.hit else 'fetched'}: {done.path} ({done.fetched_bytes:,} bytes fetched"
          + (f", evicted {', '.join(done.evicted)}" if done.evicted else "")
          + f") in {took:.1f} s", flush=True)
    # The operator times the cold start's weight-fetch phase from this (the kubelet's times are whole seconds,
    # and include this process's own start): `CacheHit: 0.004 s, 0 bytes` or `Fetched: 41.250 s, 16,060,522,392
    # bytes` (planning/cold_start_phases.py reads it).
    _report(args, f"{'CacheHit' if done.hit else 'Fetched'}: {took:.3f} s, {done.fetched_bytes:,} bytes")
    if args.hold:
        _hold(in_use_path(args.cache_root, done.key))
    return 0


def _hold(in_use: str) -> None:
    """Keep a shared lock on the entry's in-use file (as an engine does) until SIGTERM or SIGINT."""
    fd = os.open(in_use, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    print(f"holding {in_use} until stopped", flush=True)
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    signal.sigwait(stops)
    os.close(fd)
