"""docker-compose.yml, Dockerfile and the Kubernetes Job, proven without a Docker engine.

The compose file is parsed, validated against the Compose specification's JSON schema (as
vendored by check-jsonschema), and each service's own command is run here with the same
environment variable names against a fresh PostgreSQL database, in compose's order. The Job is
validated against the Kubernetes API's JSON schemas (as vendored by kubernetes-validate),
offline: no cluster, no network.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from conftest import ROOT, write_spec
from mnist_hpo.cli import app
from mnist_hpo.ml.datasets import MNIST
from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec_files import is_shipped, load_spec, resolve_path
from mnist_hpo.settings import Settings

COMPOSE = ROOT / "docker-compose.yml"
K8S_JOB = ROOT / "deploy" / "k8s-job.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# Compose's interpolation: $$ is a literal $, ${VAR}, ${VAR:-default}, ${VAR:?error}.
_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        v = env.get(name)
        unset = v is None or (v == "" and op is not None and op.startswith(":"))
        if unset and op in (":-", "-"):
            return str(arg)
        if unset and op in (":?", "?"):
            raise AssertionError(f"compose refuses to start without {name}: {arg}")
        return v or ""

    return _VAR.sub(one, value)


def compose() -> dict[str, Any]:
    parsed = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(parsed, dict)
    return parsed


def image_env() -> dict[str, str]:
    """The ENV the Dockerfile bakes into the image (one ENV instruction, `\\` continued)."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("ENV ")]
    return dict(pair.split("=", 1) for pair in line.split()[1:])


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_services_and_their_settings() -> None:
    c = compose()
    services = c["services"]
    assert {"postgres", "create-study", "worker", "dashboard"} <= set(services)
    pg = services["postgres"]
    assert "pgdata:/var/lib/postgresql/data" in pg["volumes"] and "pgdata" in c["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
    assert services["dashboard"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["create-study"]["restart"] == "no"

    worker = services["worker"]
    assert worker["restart"] == "on-failure"
    assert worker["depends_on"]["create-study"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    replicas = str(worker["deploy"]["replicas"])
    assert interpolate(replicas, {}) == "2"
    assert interpolate(replicas, {"MNIST_HPO_WORKERS": "7"}) == "7"
    # Longer than an epoch and than the heartbeat's grace, so a stopping worker is not killed
    # mid-epoch and its trial is not failed by others while it still writes.
    grace = seconds(interpolate(worker["stop_grace_period"], {}))
    assert grace > Settings().grace
    # Every image-based service shares the image's settings and the shared volumes.
    for name in ("create-study", "worker", "dashboard"):
        assert services[name]["image"] == "mnist-hpo:latest" and services[name]["init"] is True
        assert "artifacts:/data/artifacts" in services[name]["volumes"]


def test_secrets_come_from_the_environment_never_the_image() -> None:
    def strings(node: object) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [str(node)]

    secret_values = [v for v in strings(compose()) if "PASSWORD" in v]
    assert secret_values  # the postgres service and every service's storage URL
    for value in secret_values:  # always the variable, from .env or the shell; never a literal
        assert "PASSWORD" not in re.sub(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", "", value), value
    with pytest.raises(AssertionError, match="compose refuses to start without POSTGRES_PASSWORD"):
        interpolate(compose()["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"], {})
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert "PASSWORD" not in dockerfile and "MNIST_HPO_STORAGE" not in dockerfile
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=", example, re.M)


def test_the_image_installs_cpu_torch_and_runs_the_cli() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG TORCH_INDEX_URL$", text, re.M)  # required: no CUDA build by accident
    assert 'pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"' in text
    # torch first: pip then keeps the CPU build when it installs the package.
    assert text.index("torch==") < text.index("pip install .")
    assert 'ENTRYPOINT ["mnist-hpo"]' in text
    assert "USER mnist" in text


def _check_jsonschema() -> str:
    found = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("check-jsonschema is not installed (dev extra): cannot validate the schema")
    return found


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    tool = _check_jsonschema()
    schema = ["--builtin-schema", "vendor.compose-spec"]
    r = subprocess.run([tool, *schema, str(COMPOSE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # The validator is not a rubber stamp: a misspelt key in a service is rejected.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE.read_text().replace("    restart: on-failure", "    restart_policy: on-failure")
    )
    r = subprocess.run([tool, *schema, str(broken)], capture_output=True, text=True)
    assert r.returncode != 0 and "restart_policy" in r.stdout + r.stderr


# A short study for the compose run: 3 one-epoch trials on 2,000 real training images.
TINY_SPEC = """
family = "simple_mlp"
epochs = 1
n_trials = 3
train_size = 2000
validation_size = 1000

[params]
hidden = 32
batch_size = 128
"""


def _service(
    name: str, compose_env: Mapping[str, str], local: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """A service's argv (ENTRYPOINT + command) and environment, as the container gets them,
    with container-only values (paths in volumes, the database host) replaced by local ones."""
    svc = compose()["services"][name]
    argv = [sys.executable, "-m", "mnist_hpo"]  # ENTRYPOINT ["mnist-hpo"]
    argv += [interpolate(str(a), compose_env) for a in svc["command"]]
    container = {**image_env()}
    container.update({k: interpolate(str(v), compose_env) for k, v in svc["environment"].items()})
    unmapped = {k for k in container if k.startswith("MNIST_HPO_")} - set(local)
    assert not unmapped, f"{name} uses variables this test does not map: {sorted(unmapped)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_HPO_")}
    env.update({k: v for k, v in container.items() if not k.startswith("MNIST_HPO_")})
    env.update({k: local[k] for k in container if k.startswith("MNIST_HPO_")})
    return argv, env


@pytest.mark.postgres
@pytest.mark.slow
def test_each_service_command_runs_against_postgres(
    pg_url: str, mnist_dir: Path, tmp_path: Path
) -> None:
    spec_path = write_spec(tmp_path, "tiny", TINY_SPEC)
    compose_env = {"POSTGRES_PASSWORD": "s3cret", "MNIST_HPO_SPEC": str(spec_path)}
    compose_env["MNIST_HPO_STUDY"] = "compose"
    c = compose()

    # The storage URL the containers get names the postgres service and its credentials.
    url = make_url(
        interpolate(c["services"]["worker"]["environment"]["MNIST_HPO_STORAGE"], compose_env)
    )
    pg_env = {
        k: interpolate(v, compose_env) for k, v in c["services"]["postgres"]["environment"].items()
    }
    assert url.host == "postgres" and url.host in c["services"]
    assert (url.username, url.password, url.database) == (
        pg_env["POSTGRES_USER"],
        "s3cret",
        pg_env["POSTGRES_DB"],
    )

    # The named volumes, as local folders; the MNIST cache volume starts empty in compose,
    # here it holds links to the real files, which the download step then finds verified.
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)
    for f in MNIST.files:
        (cache / "mnist" / f"{f.name}.gz").symlink_to(mnist_dir / f"{f.name}.gz")
    local = {
        "MNIST_HPO_STORAGE": pg_url,
        "MNIST_HPO_CACHE": str(cache),
        "MNIST_HPO_ARTIFACTS": str(tmp_path / "artifacts"),
        "MNIST_HPO_DEVICE": "cpu",
        # Not a path or a host: the container's own value (the worker's wait for its epoch
        # on `docker compose stop`), which must end before compose's SIGKILL.
        "MNIST_HPO_STOP_WAIT": interpolate(
            str(c["services"]["worker"]["environment"]["MNIST_HPO_STOP_WAIT"]), compose_env
        ),
    }
    grace = interpolate(str(c["services"]["worker"]["stop_grace_period"]), compose_env)
    assert grace.endswith("m") and float(local["MNIST_HPO_STOP_WAIT"]) < 60 * float(grace[:-1])

    def run(name: str) -> subprocess.CompletedProcess[str]:
        argv, env = _service(name, compose_env, local)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)

    r = run("create-study")
    assert r.returncode == 0 and "created study 'compose'" in r.stdout, r.stderr
    r = run("create-study")  # idempotent: compose reruns it on every `up`
    assert r.returncode == 0 and "already exists with this spec" in r.stdout, r.stderr
    r = run("fetch-data")
    assert r.returncode == 0 and "checksums verified" in r.stdout, r.stderr

    replicas = int(interpolate(str(c["services"]["worker"]["deploy"]["replicas"]), compose_env))
    argv, env = _service("worker", compose_env, local)
    workers = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(replicas)
    ]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0 and "budget of 3 trials is spent" in out, out + err
    study, _ = study_mod.load(storage_mod.open_storage(pg_url), "compose")
    states = [t.state.name for t in study.trials]
    assert len(states) == 3, states  # exactly the budget, however many replicas
    assert set(states) <= {"COMPLETE", "PRUNED"}, states

    argv, env = _service("dashboard", compose_env, local)
    # In the container it listens on 0.0.0.0:8080 behind the 127.0.0.1-only port mapping;
    # here: loopback and any free port, so the test never exposes it or collides.
    assert argv[-4:] == ["--host", "0.0.0.0", "--port", "8080"]
    argv[-3], argv[-1] = "127.0.0.1", "0"
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = next(line for line in proc.stdout if line.startswith("dashboard: "))
        base = line.split()[1].removesuffix("/dashboard")
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as resp:
            (summary,) = json.loads(resp.read())["study_summaries"]
        assert summary["study_name"] == "compose"
        with urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}") as resp:
            assert len(json.loads(resp.read())["trials"]) == len(states)
    finally:
        proc.terminate()  # SIGTERM, as `docker compose stop` sends
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "dashboard stopped" in out, err


def test_default_spec_of_the_compose_file_ships_with_the_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = compose()["services"]
    spec_ref = interpolate(services["create-study"]["command"][1], {})
    monkeypatch.chdir(tmp_path)  # the image's empty /app: no ./studies, the package's own specs
    assert "MNIST_HPO_STUDIES" not in image_env()
    assert is_shipped(resolve_path(spec_ref).parent)
    assert load_spec(spec_ref).name == interpolate(services["worker"]["command"][1], {})


def test_kubernetes_job_example() -> None:
    job = yaml.safe_load(K8S_JOB.read_text(encoding="utf-8"))
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    # Work-queue Job: N pods in parallel, no fixed completion count; each exits 0 at budget.
    assert spec["parallelism"] >= 2 and "completions" not in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    assert pod["terminationGracePeriodSeconds"] > Settings().grace
    (init,) = pod["initContainers"]
    (worker,) = pod["containers"]
    assert init["args"][0] == "create-study" and worker["args"][0] == "work"
    assert load_spec(init["args"][1]).name == worker["args"][1]  # the spec ships in studies/
    for container in (init, worker):
        (env,) = [e for e in container["env"] if e["name"] == "MNIST_HPO_STORAGE"]
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "mnist-hpo-storage", "key": "url"}
        assert "value" not in env  # never the URL itself in the manifest
    # Every option the manifest passes is one the CLI has.
    help_text = CliRunner().invoke(app, ["work", "--help"]).stdout
    for arg in worker["args"][2:]:
        if arg.startswith("--"):
            assert arg in help_text


def _kubernetes_validate():  # type: ignore[no-untyped-def]
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (dev extra): cannot validate the Job")
    return kubernetes_validate


def _no_network(*_args: object) -> None:
    raise AssertionError("the validation tried to reach the network")


def test_kubernetes_job_matches_the_kubernetes_api_schemas_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kv = _kubernetes_validate()
    monkeypatch.setattr(socket.socket, "connect", _no_network)  # any network use fails
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    job = yaml.safe_load(K8S_JOB.read_text(encoding="utf-8"))
    # Every release whose schemas it vendors (1.25 to 1.37 in kubernetes-validate 1.37.0):
    # the Job uses only batch/v1 fields, stable since Kubernetes 1.21. Strict: an unknown key
    # is an error, as `kubectl apply` (server-side field validation) makes it.
    versions = sorted(set(kv.utils.all_versions()), key=lambda v: [int(x) for x in v.split(".")])
    assert len(versions) >= 10, versions
    for version in versions:
        assert kv.validate(job, version, strict=True) == kv.utils.major_minor(version)
    newest = versions[-1]
    # The validator is not a rubber stamp: a misspelt key and a wrong type are rejected.
    misspelt = copy.deepcopy(job)
    pod = misspelt["spec"]["template"]["spec"]
    pod["restartPolicies"] = pod.pop("restartPolicy")
    with pytest.raises(kv.ValidationError, match="'restartPolicies' was unexpected"):
        kv.validate(misspelt, newest, strict=True)
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["parallelism"] = "four"
    with pytest.raises(kv.ValidationError, match="'four' is not of type 'integer'"):
        kv.validate(wrong_type, newest, strict=True)
