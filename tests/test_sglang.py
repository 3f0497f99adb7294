"""#17: SGLang, the third engine. Every command line Tidal renders for it goes through SGLang's own
argument parser — imported from the `sglang` 0.5.23 wheel (it imports without a GPU: `ServerArgs.add_cli_args`,
the parser `sglang.launch_server` uses; tools/engines/sglang.sh), and the adapter's batch follows
--max-running-requests."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.test_real_engine_flags import TOOLS, example_specs, option_specs, rendered_argv
from tidal.engines import engine


def sglang_verdicts(argvs: list[list[str]]) -> list[dict]:
    proc = subprocess.run([str(TOOLS / "sglang.sh"), str(TOOLS / "check_sglang_argv.py")], input=json.dumps(argvs),
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.real_engine
def test_sglangs_own_parser_accepts_every_rendered_command_line():
    specs = example_specs("sglang") + option_specs("sglang", "hf://org/model")
    argvs = [rendered_argv(s) for s in specs]
    assert len(argvs) >= 25 and all("--enable-metrics" in a for a in argvs)
    assert any("--tp-size" in a for a in argvs) and any("--max-running-requests=128" in a for a in argvs)
    prefix = ["python3", "-m", "sglang.launch_server", "--model-path", "/models/m"]
    verdicts = sglang_verdicts(argvs + [prefix + ["--not-an-sglang-flag", "1"],
                                        prefix + ["--max-running-requests", "lots"]])
    refused = [(a, v["error"]) for a, v in zip(argvs, verdicts) if not v["ok"]]
    assert not refused, refused
    # The check can fail: SGLang's parser refuses what it does not know, and a value of the wrong type.
    assert not verdicts[-2]["ok"] and "not-an-sglang-flag" in verdicts[-2]["error"]
    assert not verdicts[-1]["ok"] and "lots" in verdicts[-1]["error"]


def test_the_batch_is_max_running_requests_or_an_assumption_status_names():
    sglang = engine("sglang")
    assert sglang.batch(["--max-running-requests=64"]).size == 64
    assert sglang.batch(["--max-running-requests", "8", "--max-running-requests", "12"]).size == 12
    assumed = sglang.batch([])
    assert assumed.size == 2048 and not assumed.known and "--max-running-requests" in assumed.source
