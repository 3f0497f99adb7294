#!/usr/bin/env bash
# fake-gcs-server (BSD-2-Clause, github.com/fsouza/fake-gcs-server): Cloud Storage's JSON API over a directory,
# the emulator Google's client libraries reach through STORAGE_EMULATOR_HOST, for the tests of gs:// models in
# the node cache. Built once from the Go module proxy (go install, checked against go.sum's database) and cached
# under ~/.cache/tidal keyed by version.
# Usage: tools/fake-gcs-server.sh <its flags>     (runs the server)
#        tools/fake-gcs-server.sh --binary        (installs it and prints the binary's path)
set -euo pipefail
VERSION=v1.52.3
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/tidal/fake-gcs-server-$VERSION"
BIN="$DIR/fake-gcs-server"
if [ ! -x "$BIN" ]; then
  echo "building fake-gcs-server $VERSION into $DIR (go install, once)" >&2
  mkdir -p "$DIR.partial"
  GOBIN="$DIR.partial" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install "github.com/fsouza/fake-gcs-server@$VERSION" >&2
  mkdir -p "$DIR" && mv "$DIR.partial/fake-gcs-server" "$BIN" && rmdir "$DIR.partial"
fi
if [ "${1:-}" = "--binary" ]; then
  echo "$BIN"
  exit 0
fi
exec "$BIN" "$@"
