#!/usr/bin/env bash
# A Spark Connect server on loopback, from the pyspark package and Debian's OpenJDK 17: the
# scan engine for the tests (tests/corpus/test_spark_engine.py) and the "cluster on one
# machine" mode (README, "Scaling out").
#
#   bash scripts/spark-connect.sh start [DIR]   # start; prints export lines; waits until it answers
#   bash scripts/spark-connect.sh stop DIR      # stop the server living in DIR
#   bash scripts/spark-connect.sh run DIR       # in the foreground (a container's command)
#
# Environment: PYTHON (the interpreter whose site-packages hold pyspark; default python3),
# SPARK_CONNECT_PORT (default: a free port), SPARK_CONNECT_MASTER (default local[2]),
# SPARK_CONNECT_MEMORY (driver memory, default 2g), SPARK_CONNECT_BIND (default 127.0.0.1;
# docker-compose sets 0.0.0.0 inside its private network).
#
# The server binds its gRPC port to 127.0.0.1 only by default, runs with the Spark UI disabled, and logs
# at WARN (no per-task INFO lines) into DIR/server.log; DIR (a fresh temporary directory by
# default) is mode 0700 and also holds Spark's scratch space and the pid file. Debian's
# openjdk-17-jre-headless is installed with apt-get when no Java 17 is found and we are root.
# Printed: PRIVTEXT_ENGINE_URL=sc://127.0.0.1:PORT and PRIVTEXT_SPARK_DIR=DIR.
set -euo pipefail

PYTHON=${PYTHON:-python3}

_free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_java_home() {
  local d=/usr/lib/jvm/java-17-openjdk-amd64
  if [ ! -x "$d/bin/java" ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "spark-connect: OpenJDK 17 is not installed and we are not root" >&2
      return 1
    fi
    echo "spark-connect: installing Debian's openjdk-17-jre-headless" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >&2 || return 1
  fi
  echo "$d"
}

_spark_home() {
  "$PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'
}

# Sets dir, port and the server's command line (cmd) in the caller's variables.
_prepare() {
  local master home java_home bind
  home=$(_spark_home) || {
    echo "spark-connect: pyspark is not installed for $PYTHON (pip install -e '.[spark]')" >&2
    return 1
  }
  java_home=$(_java_home)
  port=${SPARK_CONNECT_PORT:-$(_free_port)}
  master=${SPARK_CONNECT_MASTER:-local[2]}
  bind=${SPARK_CONNECT_BIND:-127.0.0.1}
  if [ -z "$dir" ]; then dir=$(mktemp -d "${TMPDIR:-/tmp}/privtext-spark.XXXXXX"); fi
  mkdir -p "$dir/scratch"
  chmod 0700 "$dir"
  cat >"$dir/log4j2.properties" <<'EOF'
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:privtext.spark.log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
EOF
  export JAVA_HOME="$java_home" SPARK_HOME="$home" SPARK_LOCAL_IP=127.0.0.1
  export PYSPARK_PYTHON="$PYTHON"
  cmd=("$home/bin/spark-submit"
    --class org.apache.spark.sql.connect.service.SparkConnectServer
    --name "privtext Spark Connect"
    --master "$master"
    --driver-memory "${SPARK_CONNECT_MEMORY:-2g}"
    --driver-java-options "-Dlog4j2.configurationFile=file:$dir/log4j2.properties -Dprivtext.spark.log=$dir/server.log -Duser.timezone=UTC"
    --conf spark.connect.grpc.binding.address="$bind"
    --conf spark.connect.grpc.binding.port="$port"
    --conf spark.ui.enabled=false
    --conf spark.driver.host=127.0.0.1
    --conf spark.driver.bindAddress=127.0.0.1
    --conf spark.local.dir="$dir/scratch"
    --conf spark.sql.session.timeZone=UTC
    --conf spark.sql.shuffle.partitions=4
    --conf spark.eventLog.enabled=false
    spark-internal)
}

start() {
  local dir=${1:-} port i cmd
  _prepare
  (cd "$dir" && exec "${cmd[@]}") >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/server.pid"
  for i in $(seq 1 240); do
    if "$PYTHON" -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.5).close()" 2>/dev/null; then
      echo "export PRIVTEXT_ENGINE_URL=sc://127.0.0.1:$port"
      echo "export PRIVTEXT_SPARK_DIR=$dir"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
      echo "spark-connect: the server exited; see $dir/stdout.log and $dir/server.log" >&2
      tail -n 20 "$dir/stdout.log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  echo "spark-connect: no answer on 127.0.0.1:$port after 120 s" >&2
  stop "$dir"
  return 1
}

stop() {
  local dir=$1 pid i
  [ -f "$dir/server.pid" ] || return 0
  pid=$(cat "$dir/server.pid")
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/server.pid"
}

run() {
  local dir=${1:-} port cmd
  _prepare
  cd "$dir"
  exec "${cmd[@]}"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  run) shift; run "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 start [DIR] | stop DIR | run DIR" >&2; exit 2 ;;
esac
