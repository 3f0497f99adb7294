#!/usr/bin/env bash
# NVIDIA Triton's own `tritonserver` (2.51) on this machine, from the PyPI wheel `nvidia-pytriton`, which
# carries a working build that starts without a GPU; cached under ~/.cache/tidal keyed by version.
# Usage: tools/engines/tritonserver.sh <tritonserver arguments>
set -euo pipefail
VERSION=0.7.0
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/tidal/pytriton-$VERSION"
if [ ! -x "$DIR/pytriton/tritonserver/bin/tritonserver" ]; then
  echo "installing nvidia-pytriton $VERSION into $DIR (55 MB, once)" >&2
  rm -rf "$DIR.partial"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$DIR.partial" "nvidia-pytriton==$VERSION" >&2
  rm -rf "$DIR" && mv "$DIR.partial" "$DIR"
fi
# Its libraries: the wheel's own, the server's, and Python's (for the python backend's stub).
LIBDIR=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
export LD_LIBRARY_PATH="$DIR/nvidia_pytriton.libs:$DIR/pytriton/tritonserver/lib:$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$DIR/pytriton/tritonserver/bin/tritonserver" "$@"
