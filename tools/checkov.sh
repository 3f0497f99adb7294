#!/usr/bin/env bash
# checkov (PyPI), the third-party policy check of what the chart and the operator deploy, in a virtualenv of
# its own (its dependencies pin versions Tidal's would fight), cached under ~/.cache/tidal keyed by version.
# Usage: tools/checkov.sh <checkov arguments>
set -euo pipefail
VERSION=3.3.30
ENV="${XDG_CACHE_HOME:-$HOME/.cache}/tidal/checkov-$VERSION"
if [ ! -x "$ENV/bin/checkov" ]; then
  echo "installing checkov $VERSION into $ENV (about a minute, once)" >&2
  rm -rf "$ENV.partial"
  python3 -m venv "$ENV.partial"
  "$ENV.partial/bin/pip" install -q --disable-pip-version-check "checkov==$VERSION" >&2
  rm -rf "$ENV" && mv "$ENV.partial" "$ENV"
  # a virtualenv records its own path in its scripts: rebuild them for the final location
  python3 -m venv --upgrade "$ENV" >/dev/null
  sed -i "1s|.*|#!$ENV/bin/python3|" "$ENV/bin/checkov"
fi
exec "$ENV/bin/checkov" "$@"
