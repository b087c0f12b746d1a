#!/usr/bin/env bash
# Starts the services the tests need on loopback: a throwaway PostgreSQL cluster and a
# throwaway Redis server (the job queue when scaled out).
#
#   source scripts/test-services.sh            # start both; exports the variables below (test.sh)
#   bash scripts/test-services.sh start [postgres] [redis]   # start (default: postgres);
#                                              # prints the export lines
#   bash scripts/test-services.sh stop DIR     # stop the cluster whose data directory is DIR
#   bash scripts/test-services.sh stop-redis DIR   # stop the Redis server living in DIR
#
# The cluster lives in a fresh temporary directory, listens on 127.0.0.1 only, on a free port,
# trusts loopback connections (it holds test data only) and runs as a non-root user
# (`postgres` when we are root: PostgreSQL refuses to run as root). Debian's postgresql
# package is installed first when no server binaries are found. When the variable is already
# set, nothing is started. The pytest session stops a cluster it did not start itself only when
# PRIVTEXT_TEST_POSTGRES_DATADIR names it (exported here).
#
# Redis likewise: Debian's redis-server (installed when missing and we are root), on
# 127.0.0.1, a free port, no persistence, in a fresh temporary directory that holds its pid
# file and log; PRIVTEXT_TEST_REDIS_URL (redis://127.0.0.1:PORT/0) and PRIVTEXT_TEST_REDIS_DIR
# are exported, and the pytest session stops the server PRIVTEXT_TEST_REDIS_DIR names.

_privtext_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_privtext_pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; fi
  done | sort -V | tail -n 1
}

_privtext_pg_start() {
  local bindir port dir user run
  bindir=$(_privtext_pg_bindir)
  if [ -z "$bindir" ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "test-services: PostgreSQL is not installed and we are not root" >&2
      return 1
    fi
    echo "test-services: installing Debian's postgresql package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 || return 1
    bindir=$(_privtext_pg_bindir)
  fi
  port=$(_privtext_free_port)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/privtext-pg.XXXXXX")
  user=$(id -un)
  run=()
  if [ "$(id -u)" -eq 0 ]; then
    user=postgres
    chown "$user" "$dir"
    run=(runuser -u "$user" --)
  fi
  "${run[@]}" "$bindir/initdb" -D "$dir/data" -U privtext -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    return 1
  }
  "${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c max_connections=300" \
    start >/dev/null || {
    cat "$dir/server.log" >&2
    return 1
  }
  PRIVTEXT_TEST_POSTGRES_URL="postgresql+psycopg://privtext@127.0.0.1:$port/postgres"
  PRIVTEXT_TEST_POSTGRES_DATADIR="$dir/data"
  export PRIVTEXT_TEST_POSTGRES_URL PRIVTEXT_TEST_POSTGRES_DATADIR
}

_privtext_pg_stop() {
  local bindir run=()
  bindir=$(_privtext_pg_bindir)
  [ -n "$1" ] && [ -d "$1" ] || return 0
  if [ "$(id -u)" -eq 0 ]; then run=(runuser -u "$(stat -c %U "$1")" --); fi
  "${run[@]}" "$bindir/pg_ctl" -D "$1" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$(dirname "$1")"
}

_privtext_redis_start() {
  local server port dir
  server=$(command -v redis-server || true)
  if [ -z "$server" ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "test-services: redis-server is not installed and we are not root" >&2
      return 1
    fi
    echo "test-services: installing Debian's redis-server package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2 || return 1
    server=$(command -v redis-server) || return 1
  fi
  port=$(_privtext_free_port)
  dir=$(mktemp -d "${TMPDIR:-/tmp}/privtext-redis.XXXXXX")
  "$server" --bind 127.0.0.1 --port "$port" --protected-mode yes --save "" --appendonly no \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --daemonize yes \
    >/dev/null || {
    cat "$dir/redis.log" >&2 2>/dev/null
    rm -rf "$dir"
    return 1
  }
  local _
  for _ in $(seq 100); do
    if [ -s "$dir/redis.pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      PRIVTEXT_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
      PRIVTEXT_TEST_REDIS_DIR="$dir"
      export PRIVTEXT_TEST_REDIS_URL PRIVTEXT_TEST_REDIS_DIR
      return 0
    fi
    sleep 0.1
  done
  cat "$dir/redis.log" >&2
  _privtext_redis_stop "$dir"
  return 1
}

_privtext_redis_stop() {
  local pid _
  [ -n "$1" ] && [ -d "$1" ] || return 0
  pid=$(cat "$1/redis.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -rf "$1"
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  # Sourced (scripts/test.sh): start what is not already given.
  if [ -z "${PRIVTEXT_TEST_POSTGRES_URL:-}" ]; then
    _privtext_pg_start || echo "test-services: PostgreSQL not started; postgres tests will be skipped" >&2
  fi
  if [ -z "${PRIVTEXT_TEST_REDIS_URL:-}" ]; then
    _privtext_redis_start || echo "test-services: Redis not started; redis tests will be skipped" >&2
  fi
else
  set -euo pipefail
  case "${1:-start}" in
    start)
      services=("${@:2}")
      [ ${#services[@]} -gt 0 ] || services=(postgres)
      for service in "${services[@]}"; do
        case "$service" in
          postgres)
            _privtext_pg_start
            echo "export PRIVTEXT_TEST_POSTGRES_URL=$PRIVTEXT_TEST_POSTGRES_URL"
            echo "export PRIVTEXT_TEST_POSTGRES_DATADIR=$PRIVTEXT_TEST_POSTGRES_DATADIR"
            ;;
          redis)
            _privtext_redis_start
            echo "export PRIVTEXT_TEST_REDIS_URL=$PRIVTEXT_TEST_REDIS_URL"
            echo "export PRIVTEXT_TEST_REDIS_DIR=$PRIVTEXT_TEST_REDIS_DIR"
            ;;
          *) echo "unknown service: $service (postgres, redis)" >&2; exit 2 ;;
        esac
      done
      ;;
    stop) _privtext_pg_stop "${2:-}" ;;
    stop-redis) _privtext_redis_stop "${2:-}" ;;
    *) echo "usage: $0 [start [postgres] [redis] | stop DIR | stop-redis DIR]" >&2; exit 2 ;;
  esac
fi
