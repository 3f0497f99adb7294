"""`tidal simulate --adapters N` (or `--adapter-shares 50,30,20`): the trace's requests as traffic to LoRA adapters of
one base model, simulated two ways through the same decision code and pool: one service per adapter (each its own
replicas, each scaled to zero on its own), and the adapters on one shared base (one service, every adapter's requests
in its queue). Written to adapters.json/.md.

Not modelled: the engine's per-batch adapter slots (vLLM --max-loras; a request for an adapter outside the batch's
slots waits for one) and LoRA's extra compute per token (a few per cent); both cost the shared base a little.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .fleet import simulate_fleet
from .workloads import by_adapter


def shares_of(args) -> list[float]:
    if args.adapter_shares:
        return [float(s) for s in args.adapter_shares.split(",")]
    return [1.0] * args.adapters


def simulate_adapters(args, requests, names, cfg, scaling, started: float) -> int:
    from .report import make_policy
    shares = shares_of(args)
    traces = [t for t in by_adapter(requests, shares, seed=args.seed) if t]
    print(f"{len(shares)} adapters ({len(traces)} with requests), {len(requests):,} requests, a pool of "
          f"{args.pool_gpus} GPUs")
    rows = []
    for name in names:
        for how, split in (("one service per adapter", traces), ("adapters on a shared base", [requests])):
            print(f"simulating {name}: {how}", flush=True)
            r = simulate_fleet(split, lambda n=name: make_policy(n, cfg, scaling), cfg, args.pool_gpus)
            rows.append({"policy": name, "deployment": how, "services": len(split), "gpu_hours": r.gpu_hours,
                         "cold_starts": r.cold_starts, "slo_misses": r.slo_misses, "lost": r.lost,
                         "wait_max_s": r.wait_max})
    table = [f"| policy | deployment | services | GPU-hours | cold starts | waited > {args.slo:g} s | lost |",
             "|---|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['policy']} | {r['deployment']} | {r['services']} | {r['gpu_hours']:.2f} | {r['cold_starts']} | "
              f"{r['slo_misses']} | {r['lost']} |" for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapters.md").write_text("\n".join(table) + "\n")
    (out / "adapters.json").write_text(json.dumps({"adapter_shares": shares, "pool_gpus": args.pool_gpus,
                                                   "results": rows}, indent=2))
    print("\n".join(table))
    print(f"wrote {out / 'adapters.md'}, {out / 'adapters.json'} in {time.monotonic() - started:.1f} s")
    return 0
