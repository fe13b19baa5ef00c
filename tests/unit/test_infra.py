"""infra/ and prefect.yaml: the compose stack, the GPU job template and the deployments are well-formed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
BIN = Path(sys.executable).parent


def test_compose_stack_has_its_services_gpu_reservation_and_no_credentials():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "buckets", "prefect-server", "mlflow", "worker-cpu", "worker-gpu"} <= set(services)
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "postgresql://" in services["mlflow"]["command"] and "s3://" in services["mlflow"]["command"]
    for name in ("worker-cpu", "worker-gpu"):
        assert f"--pool {name.split('-')[1]}" in services[name]["command"]
    # every variable compose reads is one that env.example names; no literal secrets in the file
    text = (INFRA / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = dict(
        line.split("=", 1)
        for line in (INFRA / "env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert used <= set(example), used - set(example)
    assert not re.search(r"^\s*\w*(PASSWORD|SECRET\w*|ACCESS_KEY\w*):[ \t]*(?!\$)\S", text, re.MULTILINE)
    assert "infra/.env" in (ROOT / ".gitignore").read_text()
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        assert "torch==2.13.0" in (INFRA / "docker" / dockerfile).read_text()


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's substitution of ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``; ``$$`` is a literal ``$``."""

    def value(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and (env[name] or op not in (":-", ":?")):
            return env[name]
        if op in (":-", "-"):
            return arg
        raise KeyError(f"compose.yaml needs {name} ({arg})")

    text = re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}", value, text.replace("$$", "\0"))
    return text.replace("\0", "$")


def validate_compose(path: Path, env_file: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """The compose file, interpolated with ``env_file``, against the Compose Specification's JSON schema."""
    env = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    resolved = tmp_path / "compose.resolved.yaml"
    resolved.write_text(interpolate(path.read_text(), env))
    command = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(resolved)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_compose_file_follows_the_compose_specification(tmp_path):
    # Given the compose stack with the example settings, the Compose Specification's schema accepts it
    done = validate_compose(INFRA / "compose.yaml", INFRA / "env.example", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # and the validator does reject what compose would: a misspelt service key, a port that is not a port
    broken = tmp_path / "broken.yaml"
    broken.write_text((INFRA / "compose.yaml").read_text().replace("    healthcheck:", "    healthchek:", 1))
    rejected = validate_compose(broken, INFRA / "env.example", tmp_path)
    assert rejected.returncode != 0 and "healthchek" in rejected.stdout + rejected.stderr
    # the file the schema saw had the settings substituted, and `$$` (a dollar for the shell) kept as one `$`
    resolved = (tmp_path / "compose.resolved.yaml").read_text()
    assert "POSTGRES_USER: bertrec" in resolved and "pg_isready -U ${POSTGRES_USER}" in resolved


def test_gpu_job_template_requests_one_gpu():
    template = yaml.safe_load((INFRA / "k8s" / "gpu-base-job-template.json").read_text())
    assert json.loads((INFRA / "k8s" / "gpu-base-job-template.json").read_text()) == template
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert set(template["variables"]["properties"]) >= {"image", "namespace", "env", "command"}


def test_prefect_yaml_deploys_every_flow_with_schedule_pools_and_limit():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"weekly", "ray", "daily", "gpu", "manual", "rollback"}
    daily = deployments["daily"]
    assert daily["entrypoint"] == "flows/monitoring.py:drift_monitor" and daily["schedules"][0]["cron"] == "0 6 * * *"
    weekly = deployments["weekly"]
    assert weekly["entrypoint"] == "flows/training.py:training_pipeline"
    assert weekly["schedules"][0]["cron"] == "0 3 * * 1" and weekly["concurrency_limit"]["limit"] == 1
    assert deployments["gpu"]["work_pool"]["name"] == "gpu" and weekly["work_pool"]["name"] == "cpu"
    entrypoints = [d["entrypoint"] for d in config["deployments"]]  # names repeat across flows ("manual")
    assert "flows/catalogue.py:catalogue_update" in entrypoints and "flows/registry.py:promote" in entrypoints
    for entrypoint in entrypoints:
        module, function = entrypoint.split(":")
        assert f"def {function}(" in (ROOT / module).read_text()


def test_ray_deployment_runs_the_pipeline_on_the_cluster():
    from flows.overrides import ParamsOverrides, override_sets

    ray = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}["ray"]
    assert ray["entrypoint"] == "flows/training.py:training_pipeline"
    sets = override_sets(ParamsOverrides.model_validate(ray["parameters"]["overrides"]))
    assert sets == ["compute.engine=ray", "compute.address=auto"]


def test_raycluster_has_a_cpu_head_and_a_gpu_worker_group_on_the_bertrec_image():
    cluster, claim = yaml.safe_load_all((INFRA / "k8s" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    import ray

    assert cluster["spec"]["rayVersion"] == ray.__version__  # the version the ray extra installs
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    assert {"containerPort": 10001, "name": "client"} in head_container["ports"]
    assert "nvidia.com/gpu" not in head_container["resources"]["requests"]
    (gpu,) = cluster["spec"]["workerGroupSpecs"]
    worker = gpu["template"]["spec"]["containers"][0]
    assert gpu["rayStartParams"]["num-gpus"] == "1" and worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["image"] == head_container["image"] == "bertrec-cuda:latest"
    assert "'.[ray]'" in (INFRA / "docker" / "Dockerfile.cuda").read_text()
    mounts = {m["mountPath"] for c in (head_container, worker) for m in c["volumeMounts"]}
    assert mounts == {"/mnt/ray-storage"} and claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_dvc_yaml_stages_run_bertrec_steps_in_order():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [
        "fetch",
        "prepare",
        "split",
        "baselines",
        "train",
        "embed",
        "index",
        "evaluate",
        "drift",
        "register",
    ]
    from typer.main import get_command

    from bertrec.cli import app

    commands = set(get_command(app).commands)
    for name, stage in stages.items():
        assert stage["cmd"] == f"bertrec {name}" and name in commands
        for dep in stage.get("deps", []):
            assert (ROOT / dep).exists() or dep.startswith(("data/", "outputs/", "metrics/")), dep
