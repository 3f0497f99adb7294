#!/usr/bin/env bash
# S3Proxy (Apache-2.0, from Maven Central): a real S3 server, keeping objects in a directory, for the tests
# of Tidal's S3 storage. Cached under ~/.cache/tidal keyed by version; checked against Maven Central's SHA-1.
# Usage: tools/s3proxy.sh --properties <file>     (runs the server)
#        tools/s3proxy.sh --jar                   (installs it and prints the jar's path)
set -euo pipefail
VERSION=4.1.0
SHA1=0a0b89e982bc1b1b5757d45b61109e05a840dd87
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/tidal/s3proxy-$VERSION"
JAR="$DIR/s3proxy-$VERSION-jar-with-dependencies.jar"
if [ ! -f "$JAR" ]; then
  echo "downloading S3Proxy $VERSION into $DIR (55 MB, once)" >&2
  mkdir -p "$DIR"
  curl -fsS -o "$JAR.partial" \
    "https://repo1.maven.org/maven2/org/gaul/s3proxy/$VERSION/s3proxy-$VERSION-jar-with-dependencies.jar"
  echo "$SHA1  $JAR.partial" | sha1sum -c --quiet -
  mv "$JAR.partial" "$JAR"
fi
if [ "${1:-}" = "--jar" ]; then
  echo "$JAR"
  exit 0
fi
exec java -jar "$JAR" "$@"
