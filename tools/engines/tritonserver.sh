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
# The python backend laid out as --backend-directory expects it, with this Python's stub (3.11).
PYV=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
BACKENDS="$DIR/backends-$PYV"
if [ ! -f "$BACKENDS/python/triton_python_backend_stub" ]; then
  mkdir -p "$BACKENDS/python"
  cp "$DIR/pytriton/tritonserver/backends/python/libtriton_python.so" \
     "$DIR/pytriton/tritonserver/backends/python/triton_python_backend_utils.py" \
     "$DIR/pytriton/tritonserver/python_backend_stubs/$PYV/triton_python_backend_stub" "$BACKENDS/python/"
fi
# The stub is built against numpy 1's C API: with numpy 2 a model's outputs arrive empty ("output tensor
# shape does not match size of output"). The stub's embedded Python ignores PYTHONPATH but takes its
# prefix from the `python3` on PATH: a virtualenv with numpy 1, first on PATH, for the stub only.
STUB_ENV="$DIR/stub-env-$PYV"
if [ ! -f "$STUB_ENV/.complete" ]; then
  rm -rf "$STUB_ENV" && python3 -m venv "$STUB_ENV"
  "$STUB_ENV/bin/python3" -m pip install -q --disable-pip-version-check "numpy<2" >&2
  touch "$STUB_ENV/.complete"
fi
export PATH="$STUB_ENV/bin:$PATH"
if [ "${1:-}" = "--print-backend-directory" ]; then echo "$BACKENDS"; exit 0; fi
# Its libraries: the wheel's own, the server's, and Python's (for the python backend's stub).
LIBDIR=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
export LD_LIBRARY_PATH="$DIR/nvidia_pytriton.libs:$DIR/pytriton/tritonserver/lib:$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$DIR/pytriton/tritonserver/bin/tritonserver" "$@"
