"""`make install` on a machine that lacks the system tools: run for real in a mount namespace where each tool is
hidden (/dev/null bound over it, so `command -v` no longer finds it) and apt-get is a recorder, it asks apt for
exactly the packages of the missing tools, once, and nothing when nothing is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def system_packages() -> dict[str, str]:
    out = {}
    for line in (ROOT / "tools" / "system-packages.txt").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            out[fields[0]] = fields[1]
    return out


def install_with_hidden(tmp_path: Path, hidden: list[str]) -> list[list[str]]:
    """Run `make install` with these commands hidden; the apt-get calls it made, as argument lists."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("this test hides tools with `unshare -m` and bind mounts: it needs root (CI runs as root)")
    calls = tmp_path / "apt-calls"
    recorder = tmp_path / "apt-get"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    recorder.chmod(0o755)
    apt = shutil.which("apt-get")
    binds = [f"mount --bind {recorder} {apt}"]
    for command in hidden:
        path = shutil.which(command)
        if path:  # a tool this machine lacks altogether is missing already
            binds.append(f"mount --bind /dev/null {path}")
    script = " && ".join([*binds, "make -s install"])
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []


def asked_for(calls: list[list[str]]) -> set[str]:
    installs = [c for c in calls if "install" in c]
    assert len(installs) == 1, calls
    assert ["update", "-qq"] in calls and calls.index(["update", "-qq"]) < calls.index(installs[0])
    return {a for a in installs[0][installs[0].index("install") + 1:] if not a.startswith("-")}


def absent(commands) -> set[str]:
    """Packages of the commands this machine lacks even before anything is hidden."""
    packages = system_packages()
    return {packages[c] for c in commands if not shutil.which(c)}


def test_with_every_tool_hidden_it_asks_apt_for_all_of_them(tmp_path):
    packages = system_packages()
    calls = install_with_hidden(tmp_path, list(packages))
    assert asked_for(calls) == set(packages.values())


def test_it_asks_only_for_the_missing_ones(tmp_path):
    packages = system_packages()
    calls = install_with_hidden(tmp_path, ["chromedriver", "skopeo"])
    assert asked_for(calls) == {"chromium-driver", "skopeo"} | absent(packages)


def test_with_everything_present_it_asks_apt_for_nothing(tmp_path):
    calls = install_with_hidden(tmp_path, [])
    assert calls == [] or asked_for(calls) == absent(system_packages())
