#!/usr/bin/env bash
# Make sure the services the test suite talks to answer; start the ones that don't.
# PostgreSQL 15 at 127.0.0.1:5432 (user postgres, trust) and Redis 7 at 127.0.0.1:6379.
set -euo pipefail

wait_for() {  # wait_for NAME COMMAND...: up to 30 s
    local name=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then echo "$name: up"; return 0; fi
        sleep 0.5
    done
    echo "$name: did not come up" >&2
    return 1
}

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG; }

if ! pg_up; then
    echo "PostgreSQL is not answering; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
fi
wait_for PostgreSQL pg_up

if ! redis_up; then
    echo "Redis is not answering; starting it"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi
wait_for Redis redis_up

# The browser tests drive Debian's chromium (Playwright's own download cannot work here).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium is missing (browser tests); installing it"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
        || echo "could not install chromium; the browser tests will try again" >&2
fi
