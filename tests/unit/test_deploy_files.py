"""The deployment files (Dockerfile, docker-compose.yml, .env.example, deploy/ecs,
deploy/kubernetes) parse, keep the properties a graceful stop and health checks need, and
use only commands the CLI knows and ``ASYNC_JOBS_*`` variables the code reads.

The files themselves run for real in ``scripts/check-deploy.sh`` (docs/deploy.md)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from async_jobs.cli import build_parser
from async_jobs.core import settings as settings_module

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("api", "scheduler", "worker")
VARIABLE = re.compile(r"\bASYNC_JOBS_[A-Z0-9_]*[A-Z0-9]\b")


def variables_read_by_code() -> set[str]:
    """Every full ``ASYNC_JOBS_*`` name the package's sources spell out, as a literal or as
    ``f"{PREFIX}NAME"``."""
    names: set[str] = set()
    for source in (ROOT / "src" / "async_jobs").rglob("*.py"):
        text = source.read_text()
        names.update(VARIABLE.findall(text))
        names.update(
            settings_module.PREFIX + tail
            for tail in re.findall(r"\{PREFIX\}([A-Z0-9_]*[A-Z0-9])\b(?!\{)", text)
        )
    return names


KNOWN_VARIABLES = variables_read_by_code()


def is_known(name: str) -> bool:
    patterns = (settings_module._PER_USE_CASE, settings_module._SQS_QUEUE)
    return name in KNOWN_VARIABLES or any(pattern.match(name) for pattern in patterns)


def assert_command_known(command: list[str], where: str) -> None:
    """The CLI parses the command (subcommand and flags) without complaint."""
    try:
        build_parser().parse_args(command)
    except SystemExit as exc:  # argparse's way of refusing
        raise AssertionError(f"{where}: async-jobs does not accept {command}") from exc


def compose_default(value: str) -> str:
    """``${NAME:-default}`` -> ``default``, as compose interpolates it when NAME is unset."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- the variables and commands of every file ------------------------------------------------


@pytest.mark.parametrize(
    "relative",
    [
        "docker-compose.yml",
        ".env.example",
        "Dockerfile",
        "deploy/docker/healthcheck.py",
        *(f"deploy/ecs/{role}-task-definition.json" for role in ROLES),
        *(
            str(p.relative_to(ROOT))
            for p in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
        ),
    ],
)
def test_every_variable_a_file_names_is_read_by_the_code(relative: str) -> None:
    named = set(VARIABLE.findall((ROOT / relative).read_text()))
    unknown = sorted(name for name in named if not is_known(name))
    assert unknown == [], f"{relative} names variables nothing reads: {unknown}"


def test_the_variable_check_knows_real_names_and_refuses_made_up_ones() -> None:
    assert is_known("ASYNC_JOBS_DB_DSN")
    assert is_known("ASYNC_JOBS_SQS_QUEUE_NOTIFICATIONS")
    assert is_known("ASYNC_JOBS_NOTIFICATIONS_MAX_CONCURRENT")
    assert not is_known("ASYNC_JOBS_DB_DNS")
    with pytest.raises(AssertionError, match="does not accept"):
        assert_command_known(["worker", "--concurency", "3"], "here")


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_is_multi_stage_non_root_exec_form_with_a_health_check() -> None:
    steps = dockerfile_instructions()
    froms = [arg for op, arg in steps if op == "FROM"]
    assert len(froms) >= 2 and all("${BASE_IMAGE}" in f for f in froms)
    args = {arg.split("=", 1)[0] for op, arg in steps if op == "ARG"}
    assert {"BASE_IMAGE", "EXTRAS"} <= args
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    (entrypoint,) = [arg for op, arg in final if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["async-jobs"]  # exec form: PID 1 gets SIGTERM
    (command,) = [arg for op, arg in final if op == "CMD"]
    assert_command_known(json.loads(command), "Dockerfile CMD")
    (health,) = [arg for op, arg in final if op == "HEALTHCHECK"]
    assert "CMD" in health and "async-jobs-healthcheck" in health


def load_healthcheck() -> Any:
    spec = importlib.util.spec_from_file_location(
        "healthcheck", ROOT / "deploy" / "docker" / "healthcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:8000/health"),
        (
            {"ASYNC_JOBS_API_PORT": "9000", "ASYNC_JOBS_API_PREFIX": "/api/v1/"},
            "http://127.0.0.1:9000/api/v1/health",
        ),
        ({"ASYNC_JOBS_METRICS_PORT": "9100"}, "http://127.0.0.1:9100/health"),
        ({"HEALTHCHECK_PATH": "/health/ready"}, "http://127.0.0.1:8000/health/ready"),
        ({"HEALTHCHECK_URL": "http://x:1/h", "ASYNC_JOBS_API_PORT": "2"}, "http://x:1/h"),
    ],
)
def test_the_image_health_check_probes_the_port_the_process_serves(
    env: dict[str, str], url: str
) -> None:
    assert load_healthcheck().health_url(env) == url


# --- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def our_services(compose: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Services running the async-jobs entry point of our image."""
    for name, service in compose["services"].items():
        if "async-job-server" in service.get("image", "") and "entrypoint" not in service:
            yield name, service


def test_compose_has_the_whole_stack_and_the_transport_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"postgres", "migrate", "api", "scheduler-1", "scheduler-2", "worker-1"}
    assert expected | {"worker-2"} <= set(services)
    commands = {name: s["command"][0] for name, s in our_services(compose)}
    assert commands["migrate"] == "migrate" and services["migrate"]["restart"] == "no"
    assert [commands[f"worker-{i}"] for i in (1, 2)] == ["worker", "worker"]
    assert [commands[f"scheduler-{i}"] for i in (1, 2)] == ["scheduler", "scheduler"]
    for role in ("api", "worker-1", "scheduler-1"):
        assert services[role]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    assert {"sqs", "redis"} <= profiles
    assert not services["postgres"].get("profiles") and not services["api"].get("profiles")


def test_compose_commands_are_known_to_the_cli(compose: dict[str, Any]) -> None:
    names = {name for name, _ in our_services(compose)}
    assert names == {
        "migrate",
        "api",
        "scheduler-1",
        "scheduler-2",
        "worker-1",
        "worker-2",
        "sqs-create-queues",
    }
    for name, service in our_services(compose):
        assert_command_known(service["command"], f"compose service {name}")


def test_compose_gives_workers_longer_than_their_grace_period(compose: dict[str, Any]) -> None:
    for name in ("worker-1", "worker-2"):
        service = compose["services"][name]
        grace = float(compose_default(service["environment"]["ASYNC_JOBS_WORKER_GRACE_SECONDS"]))
        stop = service["stop_grace_period"]
        assert stop.endswith("s") and float(stop[:-1]) > grace


def test_env_example_is_plain_assignments_of_known_variables() -> None:
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line), line


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("profile", [None, "sqs", "redis"])
def test_compose_accepts_the_file(profile: str | None, tmp_path: Path) -> None:
    env_file = tmp_path / "stack.env"
    env_file.write_text((ROOT / ".env.example").read_text())
    command = ["docker-compose", "-f", str(ROOT / "docker-compose.yml")]
    if profile:
        command += ["--profile", profile]
    done = subprocess.run(
        [*command, "config", "--services"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "STACK_ENV_FILE": str(env_file)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Compose v1 lists every service whatever the profile; which profile holds which service
    # is checked on the parsed file above.
    assert {"api", "migrate", "worker-2", "sqs", "redis"} <= set(done.stdout.split())


# --- deploy/ecs ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_ecs_task_definition(role: str) -> None:
    task = json.loads((ROOT / "deploy" / "ecs" / f"{role}-task-definition.json").read_text())
    (container,) = task["containerDefinitions"]
    assert_command_known(container["command"], f"ECS {role}")
    assert container["command"][0] == role
    env = {e["name"]: e["value"] for e in container["environment"]}
    secret_names = {s["name"] for s in container.get("secrets", [])}
    assert "ASYNC_JOBS_DB_DSN" in secret_names  # a password never sits in the plain env
    assert container["healthCheck"]["command"][:2] == ["CMD", "async-jobs-healthcheck"]
    assert container["stopTimeout"] <= 120  # ECS allows at most 120 s
    if role == "worker":  # running jobs get their grace period before ECS sends SIGKILL
        assert float(env["ASYNC_JOBS_WORKER_GRACE_SECONDS"]) < container["stopTimeout"]
    port = int(env.get("ASYNC_JOBS_METRICS_PORT") or env["ASYNC_JOBS_API_PORT"])
    assert [m["containerPort"] for m in container["portMappings"]] == [port]


# --- deploy/kubernetes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def kube() -> list[dict[str, Any]]:
    documents = []
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        documents.extend(yaml_documents(path))
    return documents


def kinds(kube: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in kube if d["kind"] == kind}


def container_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


@pytest.mark.parametrize("role", ROLES)
def test_kubernetes_deployment(kube: list[dict[str, Any]], role: str) -> None:
    deployment = kinds(kube, "Deployment")[f"async-jobs-{role}"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert_command_known(container["args"], f"kubernetes {role}")
    assert container["args"][0] == role
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = container_env(container)
    expected_port = env.get("ASYNC_JOBS_METRICS_PORT") or env["ASYNC_JOBS_API_PORT"]
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/health/ready"
    assert str(ports[ready["port"]]) == expected_port
    live = container["livenessProbe"]
    if role == "api":  # the API's /health asks the store and the broker: an outage must not
        assert str(ports[live["tcpSocket"]["port"]]) == expected_port  # restart every pod
    else:  # a worker's or scheduler's own /health answers 200 while the process runs
        assert live["httpGet"]["path"] == "/health"
        assert str(ports[live["httpGet"]["port"]]) == expected_port
    if role == "worker":  # running jobs get their grace period before the kubelet's SIGKILL
        grace = float(env["ASYNC_JOBS_WORKER_GRACE_SECONDS"])
        assert pod["terminationGracePeriodSeconds"] > grace
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_kubernetes_migration_job_and_worker_disruption_budget(
    kube: list[dict[str, Any]],
) -> None:
    job = kinds(kube, "Job")["async-jobs-migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    budget = kinds(kube, "PodDisruptionBudget")["async-jobs-worker"]
    worker = kinds(kube, "Deployment")["async-jobs-worker"]
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1
    config = kinds(kube, "ConfigMap")["async-jobs"]
    assert all(is_known(name) for name in config["data"])
