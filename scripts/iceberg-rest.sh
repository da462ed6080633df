#!/usr/bin/env bash
# Apache Iceberg's own REST catalog server (org.apache.iceberg.rest.RESTCatalogServer, the server
# in the apache/iceberg-rest-fixture image docker-compose.yml runs), from the Maven Central jars
# (scripts/iceberg-rest/pom.xml) on the machine's Java 17+: a JdbcCatalog on a SQLite file with
# its warehouse on an S3-protocol server. No Docker.
#
#   scripts/iceberg-rest.sh install                          # jars into .tools/iceberg-rest-<ver>/libs (once)
#   scripts/iceberg-rest.sh run PORT DB WAREHOUSE S3_ENDPOINT # foreground server (exec java)
#   scripts/iceberg-rest.sh serve PORT                       # configured like the image: CATALOG_* from the environment
#
# `run` serves http://127.0.0.1:PORT (the server binds every interface: loopback tests only),
# keeps its catalog in the SQLite file DB (kept across runs) and writes table files to WAREHOUSE
# (s3://BUCKET/PREFIX, the bucket must exist) through S3FileIO at S3_ENDPOINT, path-style, with
# the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (default test/test, moto's).
# Clients set the S3 endpoint themselves: the server's /v1/config hands out none.
# The server takes its catalog properties from CATALOG_* variables (CATALOG_A__B_C = a-b.c).
# `serve` is the apache/iceberg-rest-fixture image's entrypoint: the caller's CATALOG_* (e.g. a
# docker-compose service's environment, as tests/stack.rs passes it), over the image's defaults.
set -euo pipefail

ICEBERG_VERSION=1.10.0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=$root/.tools/iceberg-rest-$ICEBERG_VERSION
libs=$home/libs

die() { echo "iceberg-rest.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -e/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2; exit 2; }

install() {
  [[ -f $libs/.complete && $(cat "$libs/.complete") == "$ICEBERG_VERSION" ]] && return 0
  command -v java >/dev/null || die "Java 17+ is needed: apt-get install openjdk-17-jre-headless maven"
  command -v mvn >/dev/null || die "Maven is needed to fetch the jars from Maven Central: apt-get install maven"
  mkdir -p "$root/.tools"
  exec 9>"$root/.tools/iceberg-rest-$ICEBERG_VERSION.lock"
  flock 9
  if [[ ! -f $libs/.complete || $(cat "$libs/.complete") != "$ICEBERG_VERSION" ]]; then
    echo "iceberg-rest.sh: fetching Apache Iceberg $ICEBERG_VERSION's REST catalog server from Maven Central into ${home#"$root"/}" >&2
    rm -rf "$libs" "$libs.tmp"
    local out
    if ! out=$(mvn -q -B -f "$root/scripts/iceberg-rest/pom.xml" \
        dependency:copy-dependencies -DoutputDirectory="$libs.tmp" -DincludeScope=runtime 2>&1); then
      printf '%s\n' "$out" >&2
      die "could not fetch the jars (scripts/iceberg-rest/pom.xml)"
    fi
    echo "$ICEBERG_VERSION" > "$libs.tmp/.complete"
    mv "$libs.tmp" "$libs"
  fi
  exec 9>&-
}

# The server in the foreground (exec: the caller's pid is the JVM), configured by CATALOG_*.
exec_server() {
  exec java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -cp "$libs/*" org.apache.iceberg.rest.RESTCatalogServer
}

run() { # PORT DB WAREHOUSE S3_ENDPOINT
  [[ $# -eq 4 ]] || usage
  [[ $1 =~ ^[0-9]+$ ]] || die "not a port: $1"
  install
  local db
  db=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
  export CATALOG_CATALOG__IMPL=org.apache.iceberg.jdbc.JdbcCatalog
  export CATALOG_URI="jdbc:sqlite:$db"
  export CATALOG_JDBC_SCHEMA__VERSION=V1
  export CATALOG_WAREHOUSE="$3"
  export CATALOG_IO__IMPL=org.apache.iceberg.aws.s3.S3FileIO
  export CATALOG_S3_ENDPOINT="$4"
  export CATALOG_S3_PATH__STYLE__ACCESS=true
  export CATALOG_S3_ACCESS__KEY__ID="${AWS_ACCESS_KEY_ID:-test}"
  export CATALOG_S3_SECRET__ACCESS__KEY="${AWS_SECRET_ACCESS_KEY:-test}"
  export CATALOG_CLIENT_REGION="${AWS_REGION:-us-east-1}"
  # The port: CATALOG_REST_PORT (the image's REST_PORT is not read by the server).
  export CATALOG_REST_PORT="$1"
  exec_server
}

serve() { # PORT
  [[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || usage
  install
  # The image's ENV lines (docker/iceberg-rest-fixture/Dockerfile), where the caller set nothing.
  export CATALOG_CATALOG__IMPL="${CATALOG_CATALOG__IMPL:-org.apache.iceberg.jdbc.JdbcCatalog}"
  export CATALOG_URI="${CATALOG_URI:-jdbc:sqlite:file::memory:?cache=shared}"
  export CATALOG_JDBC_USER="${CATALOG_JDBC_USER:-user}"
  export CATALOG_JDBC_PASSWORD="${CATALOG_JDBC_PASSWORD:-password}"
  export CATALOG_REST_PORT="$1"
  exec_server
}

case ${1:-} in
  install) install ;;
  run) shift; run "$@" ;;
  serve) shift; serve "$@" ;;
  *) usage ;;
esac
