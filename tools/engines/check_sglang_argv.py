"""Read a JSON list of argv lists (`python3 -m sglang.launch_server ...`) on stdin; print, as JSON, for each
whether SGLang's own parser (ServerArgs.add_cli_args, the one launch_server uses) accepts its arguments,
and its error if not. Runs in tools/engines/sglang.sh's virtualenv."""

import argparse
import contextlib
import io
import json
import sys

from sglang.srt.server_args import ServerArgs

PREFIX = ["python3", "-m", "sglang.launch_server"]


def verdict(argv: list[str]) -> dict:
    if argv[:3] != PREFIX:
        return {"ok": False, "error": f"not a launch_server command line: {argv[:3]}"}
    parser = argparse.ArgumentParser(exit_on_error=False)
    ServerArgs.add_cli_args(parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(argv[3:])
    except (argparse.ArgumentError, SystemExit) as exc:
        # the usage text lists every option: the last line is what was wrong
        return {"ok": False, "error": (str(exc) if isinstance(exc, argparse.ArgumentError)
                                       else err.getvalue().strip().splitlines()[-1])}
    return {"ok": True, "error": ""}


print(json.dumps([verdict(a) for a in json.load(sys.stdin)]))
