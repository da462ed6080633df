#!/usr/bin/env bash
# The Apache Kafka broker of the tests, the demo and the benchmarks: one KRaft node that is both
# broker and controller, run from the Maven Central jars (scripts/kafka/pom.xml) on the machine's
# Java 17+. No tarball, no ZooKeeper, no Docker.
#
#   scripts/kafka.sh install                        # jars into .tools/kafka-<ver>/libs (once; silent when there)
#   scripts/kafka.sh run DIR PORT CONTROLLER_PORT   # foreground broker (exec java: the pid is the broker's)
#   scripts/kafka.sh start DIR PORT CONTROLLER_PORT # background broker (log DIR/broker.log); prints its pid once it answers
#   scripts/kafka.sh stop DIR                       # stops the broker `start` left running for DIR
#   scripts/kafka.sh topic BOOTSTRAP NAME PARTITIONS
#
# `run` writes DIR/server.properties, formats DIR/data on the first run (KRaft storage, random
# cluster id) and then execs the broker in the foreground, so a caller can SIGKILL the pid it
# spawned to simulate a crash and run the same command again on the same DIR: the second run skips
# the format and recovers the data (topics, records, committed group offsets).
# Listeners: PLAINTEXT on 127.0.0.1:PORT (clients), CONTROLLER on 127.0.0.1:CONTROLLER_PORT.
# Broker output (warnings and errors only, scripts/kafka/log4j2.properties) goes to stderr.
#
# Environment: KAFKA_HEAP_OPTS (default -Xms256m -Xmx768m), KAFKA_JVM_OPTS (GC etc.),
# KAFKA_START_TIMEOUT (seconds `start` waits, default 90).
set -euo pipefail

KAFKA_VERSION=4.1.1

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
home=$root/.tools/kafka-$KAFKA_VERSION
libs=$home/libs
log4j=$root/scripts/kafka/log4j2.properties

die() { echo "kafka.sh: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -e/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2; exit 2; }

need_java() {
  command -v java >/dev/null ||
    die "Java 17+ is needed for the Kafka broker: apt-get install openjdk-17-jre-headless maven"
}

install() {
  [[ -f $libs/.complete && $(cat "$libs/.complete") == "$KAFKA_VERSION" ]] && return 0
  need_java
  command -v mvn >/dev/null ||
    die "Maven is needed to fetch the Kafka jars from Maven Central: apt-get install maven"
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')
  [[ ${major%%.*} -ge 17 ]] 2>/dev/null ||
    die "Kafka $KAFKA_VERSION needs Java 17+ (found ${major:-unknown}): apt-get install openjdk-17-jre-headless"
  mkdir -p "$root/.tools"
  # Parallel callers (tests starting brokers at once) download once.
  exec 9>"$root/.tools/kafka-$KAFKA_VERSION.lock"
  flock 9
  if [[ ! -f $libs/.complete || $(cat "$libs/.complete") != "$KAFKA_VERSION" ]]; then
    echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION from Maven Central into ${home#"$root"/}" >&2
    rm -rf "$libs" "$libs.tmp"
    local out  # (Maven 3.8's -q still prints stray ANSI resets: show its output only on failure)
    if ! out=$(mvn -q -B -f "$root/scripts/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DoutputDirectory="$libs.tmp" -DincludeScope=runtime 2>&1); then
      printf '%s\n' "$out" >&2
      die "could not fetch the Kafka $KAFKA_VERSION jars (scripts/kafka/pom.xml)"
    fi
    echo "$KAFKA_VERSION" > "$libs.tmp/.complete"
    mv "$libs.tmp" "$libs"
  fi
  exec 9>&-
}

java_tool() { # main-class args...: a short-lived Kafka CLI tool (small heap, quick JIT)
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$log4j" -cp "$libs/*" "$@"
}

port_arg() { [[ $1 =~ ^[0-9]+$ && $1 -gt 0 && $1 -lt 65536 ]] || die "not a port: $1"; }

random_cluster_id() { # 16 random bytes, base64url without padding (what StorageTool random-uuid prints)
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    [[ $id != -* ]] && { echo "$id"; return; }  # a leading '-' would read as a CLI flag
  done
}

run() { # DIR PORT CONTROLLER_PORT
  [[ $# -eq 3 ]] || usage
  port_arg "$2"; port_arg "$3"
  local dir port=$2 cport=$3
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  install
  mkdir -p "$dir/logs"
  cat > "$dir/server.properties" <<EOF
# Written by scripts/kafka.sh run (rewritten on every run).
process.roles=broker,controller
node.id=1
# A static quorum of one: no --standalone/--initial-controllers at format time, and the
# controller port may change between runs on the same data.
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data

# One node: every internal topic with one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
# Fewer partitions for the internal topics (default 50 each): created faster on first use.
offsets.topic.num.partitions=5
transaction.state.log.num.partitions=5
share.coordinator.state.topic.num.partitions=5

# Topics are created explicitly (scripts/kafka.sh topic).
auto.create.topics.enable=false
num.partitions=1
delete.topic.enable=true

# Groups: no initial rebalance delay, short client sessions allowed.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
group.consumer.min.session.timeout.ms=1000
group.consumer.min.heartbeat.interval.ms=500

# Restart after a crash (SIGKILL): the restarted broker cannot re-register until the controller
# has fenced its previous incarnation, i.e. one broker session timeout (9 s by default) after
# the controller came up. 3 s keeps that short; heartbeats every 0.5 s keep a busy broker in.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500

# Small for a shared 2-core machine: few threads, a small log-cleaner buffer (128 MB by default;
# the cleaner compacts __consumer_offsets).
num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216

# Durability as Kafka's defaults: no fsync per message (the OS page cache outlives a SIGKILLed
# broker); retention 7 days.
log.retention.hours=168
log.retention.check.interval.ms=300000
EOF
  if [[ ! -f $dir/data/meta.properties ]]; then
    # No meta.properties: never formatted (or a format was interrupted before writing it, so
    # there is no data to keep).
    rm -rf "$dir/data"
    local out
    if ! out=$(java_tool kafka.tools.StorageTool format -t "$(random_cluster_id)" \
        -c "$dir/server.properties" 2>&1); then
      printf '%s\n' "$out" >&2
      die "formatting $dir/data failed"
    fi
  fi
  # Serial GC: no concurrent GC threads competing with the daemon on 2 cores; the heap is small.
  # shellcheck disable=SC2086
  exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} \
    ${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError} \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$log4j" -Dkafka.logs.dir="$dir/logs" \
    -cp "$libs/*" kafka.Kafka "$dir/server.properties"
}

answers() { # PORT: 0 once the broker answers an ApiVersions request (Kafka only accepts client
  # connections after it has started up and been unfenced by its controller)
  local n
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  # size 15 | api_key 18 (ApiVersions) | version 0 | correlation id 1 | client id "probe"
  printf '\x00\x00\x00\x0f\x00\x12\x00\x00\x00\x00\x00\x01\x00\x05probe' >&3 2>/dev/null || { exec 3<&-; return 1; }
  n=$(timeout 5 head -c 8 <&3 2>/dev/null | wc -c) || true
  exec 3<&-
  [[ $n -eq 8 ]]
}

start() { # DIR PORT CONTROLLER_PORT
  [[ $# -eq 3 ]] || usage
  port_arg "$2"; port_arg "$3"
  local dir pid
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  install
  if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then die "127.0.0.1:$2 is already in use"; fi
  setsid "${BASH_SOURCE[0]}" run "$dir" "$2" "$3" > "$dir/broker.log" 2>&1 < /dev/null &
  pid=$!
  echo "$pid" > "$dir/broker.pid"
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  until answers "$2"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$dir/broker.log" >&2
      die "the broker exited during start-up (log: $dir/broker.log)"
    fi
    if (( SECONDS >= deadline )); then
      kill -9 "$pid" 2>/dev/null || true
      tail -n 30 "$dir/broker.log" >&2
      die "the broker did not answer on 127.0.0.1:$2 within ${KAFKA_START_TIMEOUT:-90} s (log: $dir/broker.log)"
    fi
    sleep 0.2
  done
  echo "$pid"
}

stop() { # DIR: SIGTERM (controlled shutdown), SIGKILL after 30 s
  [[ $# -eq 1 ]] || usage
  local pidfile=$1/broker.pid pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  rm -f "$pidfile"
  # Only a pid that is still this DIR's broker (its command line names DIR).
  grep -qF "$(cd "$1" && pwd)/server.properties" "/proc/$pid/cmdline" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

topic() { # BOOTSTRAP NAME PARTITIONS
  [[ $# -eq 3 ]] || usage
  install
  java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$1" --create --if-not-exists \
    --topic "$2" --partitions "$3" --replication-factor 1
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
  install) [[ $# -eq 0 ]] || usage; install ;;
  run) run "$@" ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  topic) topic "$@" ;;
  *) usage ;;
esac
