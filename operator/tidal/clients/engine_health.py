"""Ask a running engine whether it serves the model (beyond its pod being Ready).

Each engine adapter names its check (`model_check`): "openai" — the served name is listed by
`GET /v1/models` (OpenAI-compatible servers); "kserve-v2" — KServe v2's model-ready call
(`GET /v2/models/{name}/ready`, what `tritonclient`'s is_model_ready sends; Triton).
"""

from __future__ import annotations

import aiohttp

TIMEOUT_S = 3.0


async def openai_models(host: str, port: int) -> tuple[list[str] | None, str]:
    """The ids `GET /v1/models` lists (the served model, and each LoRA adapter loaded on it), or None and why."""
    url = f"http://{host}:{port}/v1/models"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
            async with http.get(url) as resp:
                if resp.status != 200:
                    return None, f"GET {url} answered {resp.status}"
                return [m.get("id") for m in (await resp.json()).get("data", [])], ""
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as err:
        return None, f"GET {url} failed: {err or type(err).__name__}"


async def openai_model_ready(host: str, port: int, served_name: str) -> tuple[bool, str]:
    return listing_serves(host, port, await openai_models(host, port), served_name)


def listing_serves(host: str, port: int, listing: tuple[list[str] | None, str], served_name: str) -> tuple[bool, str]:
    """Whether an answer of `openai_models` lists the served name, and if not, why."""
    ids, why = listing
    if ids is None:
        return False, why
    if served_name in ids:
        return True, ""
    return False, f"the engine at {host}:{port} serves {ids}, not {served_name!r}"


async def triton_model_ready(host: str, port: int, served_name: str) -> tuple[bool, str]:
    """KServe v2's model-ready call, as `tritonclient`'s is_model_ready makes it: 200 when ready, 400 not.
    (Asked directly: the client library would bring numpy into the operator's image for one GET.)"""
    url = f"http://{host}:{port}/v2/models/{served_name}/ready"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
            async with http.get(url) as resp:
                await resp.read()
                if resp.status == 200:
                    return True, ""
                return False, f"Triton at {host}:{port} reports model {served_name!r} not ready ({resp.status})"
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        return False, f"Triton at {host}:{port} did not answer: {err or type(err).__name__}"


CHECKS = {"openai": openai_model_ready, "kserve-v2": triton_model_ready}


async def model_ready(check: str, host: str, port: int, served_name: str) -> tuple[bool, str]:
    """check: the engine adapter's `model_check`."""
    return await CHECKS[check](host, port, served_name)
