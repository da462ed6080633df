#!/usr/bin/env bash
# Installs everything admetrics needs on a fresh machine, skipping what is already there at the
# right version. Idempotent; used by scripts/demo.sh (--demo: no Python) and scripts/test.sh.
#
#   scripts/setup.sh          # Kafka broker, Iceberg REST catalog, wasm targets, cargo-component, Python test venv
#   scripts/setup.sh --demo   # only what the demo needs (Kafka broker + wasm target)
#   scripts/setup.sh --kafka  # only the Apache Kafka broker (scripts/kafka.sh install)
#   scripts/setup.sh --python # only the Python venv (scripts/query.sh)
#   scripts/setup.sh --flink  # the test venv, PyFlink in .venv-flink and .venv-flink-kafka, the Kafka broker and
#                             # the Flink Kafka/Iceberg jars (scripts/flink-compare.sh [--kafka])
#   scripts/setup.sh --superset  # Superset + DuckDB in .venv-superset, Debian's redis-server (scripts/dashboard.sh)
#   scripts/setup.sh --browser   # Debian's Chromium for the dashboard's browser test
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_COMPONENT_VERSION=0.21.1
CARGO_FUZZ_VERSION=0.13.2
mode=${1:-all}

log() { printf '\033[1msetup:\033[0m %s\n' "$*"; }
export PATH="$HOME/.cargo/bin:$PATH"

setup_python() {
  # Python readers for the tests (PyIceberg, DuckDB + its offline iceberg/avro extensions).
  if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    python3 -m venv .venv
  fi
  local stamp=.venv/.requirements.sha256 want
  want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    log "installing Python test requirements"
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    echo "$want" > "$stamp"
  fi
}
setup_flink() {
  # PyFlink for the side-by-side benchmark, in its own venv (it pins its own Python packages);
  # its local mini-cluster runs on the machine's Java 17.
  command -v java >/dev/null || { echo "setup: Flink needs Java 17 (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
  [[ -x .venv-flink/bin/python ]] || { log "creating .venv-flink"; python3 -m venv .venv-flink; }
  local stamp=.venv-flink/.requirements.sha256 want
  want=$(sha256sum scripts/flink/requirements.txt | cut -d' ' -f1)
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    log "installing PyFlink (scripts/flink/requirements.txt)"
    .venv-flink/bin/pip install --quiet --disable-pip-version-check -r scripts/flink/requirements.txt
    echo "$want" > "$stamp"
  fi
  # The Kafka side by side (scripts/flink-compare.sh --kafka): PyFlink 2.0 in .venv-flink-kafka
  # (the newest Flink with both a Kafka SQL connector and an Iceberg runtime on Maven Central),
  # and the pinned jars of scripts/flink/pom.xml from Maven Central into .tools/flink-jars-2.0
  # (Kafka connector, Iceberg Flink runtime, Hadoop's shaded client, sqlite-jdbc; ~110 MB).
  setup_venv .venv-flink-kafka scripts/flink/requirements-kafka.txt "PyFlink 2.0 for the Kafka side by side"
  command -v mvn >/dev/null || { echo "setup: the Flink connector jars are fetched with Maven: apt-get install maven" >&2; exit 1; }
  local jars=.tools/flink-jars-2.0 pom
  pom=$(sha256sum scripts/flink/pom.xml | cut -d' ' -f1)
  if [[ ! -f $jars/.complete || $(cat "$jars/.complete") != "$pom" ]]; then
    log "fetching the Flink Kafka/Iceberg jars from Maven Central (scripts/flink/pom.xml)"
    rm -rf "$jars" "$jars.tmp"
    mkdir -p .tools
    local out
    if ! out=$(mvn -q -B -f scripts/flink/pom.xml dependency:copy-dependencies \
        -DoutputDirectory="$PWD/$jars.tmp" -DexcludeTransitive=true 2>&1); then
      printf '%s\n' "$out" >&2
      echo "setup: could not fetch the Flink jars (scripts/flink/pom.xml)" >&2
      exit 1
    fi
    echo "$pom" > "$jars.tmp/.complete"
    mv "$jars.tmp" "$jars"
  fi
  # kcat (librdkafka's CLI, Debian): the bare-consumer baseline on the client admetrics uses.
  if ! command -v kcat >/dev/null; then
    log "installing Debian packages: kcat"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null
  fi
}
setup_venv() { # dir requirements-file what
  local dir=$1 req=$2 what=$3
  [[ -x $dir/bin/python ]] || { log "creating $dir"; python3 -m venv "$dir"; }
  local stamp=$dir/.requirements.sha256 want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    log "installing $what ($req)"
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
  fi
}
setup_browser() {
  # Headless Chromium from Debian for the dashboard's browser test (Playwright drives it through
  # executable_path; its own browser download cannot work offline), and Debian's docker-compose
  # (1.29, Python) whose `config` validates docker-compose.yml without a Docker engine.
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
setup_redis() {
  # Debian's redis-server: Superset's caches (scripts/dashboard.sh starts one of its own on a
  # unix socket unless ADMETRICS_REDIS_URL names another).
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing Debian packages: redis-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
}
setup_kafka() {
  # The Apache Kafka broker of the tests, the demo and the benchmarks (scripts/kafka.sh): jars
  # from Maven Central into .tools/kafka-<version>/, run on the machine's Java 17+.
  local missing=()
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup: the Kafka broker needs Java 17+ and Maven: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  scripts/kafka.sh install
}
if [[ $mode == --kafka ]]; then
  setup_kafka
  exit 0
fi
if [[ $mode == --superset ]]; then
  setup_venv .venv-superset dashboard/requirements.txt "Superset"
  setup_redis
  exit 0
fi
if [[ $mode == --browser ]]; then
  setup_browser
  exit 0
fi
if [[ $mode == --python ]]; then
  setup_python
  exit 0
fi
if [[ $mode == --flink ]]; then
  setup_python
  setup_kafka
  setup_flink
  exit 0
fi

# WebAssembly targets: wasip2 for plain cargo builds, wasip1 for cargo-component's adapter.
installed_targets=$(rustup target list --installed)
for t in wasm32-wasip2 wasm32-wasip1; do
  if ! grep -qx "$t" <<<"$installed_targets"; then
    log "adding rust target $t"
    rustup target add "$t"
  fi
done

install_crate() { # name version binary-check-command [cargo install args...]
  local name=$1 version=$2 check=$3; shift 3
  if have=$($check 2>/dev/null) && grep -q " $version\$" <<<"$have"; then
    return
  fi
  log "installing $name $version (takes several minutes on 2 cores)"
  cargo install "$name" --version "$version" --locked "$@"
}

setup_kafka

if [[ $mode == --demo ]]; then
  exit 0
fi

# Apache Iceberg's REST catalog server for the REST + S3 test (scripts/iceberg-rest.sh): jars
# from Maven Central into .tools/iceberg-rest-<version>/.
scripts/iceberg-rest.sh install

install_crate cargo-component "$CARGO_COMPONENT_VERSION" "cargo component --version"
# The fuzzer driver (scripts/fuzz.sh); runs on stable without a sanitizer.
install_crate cargo-fuzz "$CARGO_FUZZ_VERSION" "cargo fuzz --version"

setup_python
setup_venv .venv-superset dashboard/requirements.txt "Superset"
setup_redis
setup_browser
log "ready"
