"""The hyper-parameter search as a Prefect flow: N trials of one Optuna study, by several workers at once.

``tune`` brings the data the search reads up to date (the stages up to ``split``), creates or joins
the study and its MLflow parent run, then starts ``workers`` processes of ``bertrec tune`` that
share the trials (each its own process: on a GPU worker each trains on the GPU; on a CPU worker
give each a share of the cores). The study's database (``tune.storage``) is what they share, so
workers of several flow runs, on several machines, can join one study. The result is the best
trial and the params.yaml diff, as a Markdown artifact of the run.

Deployed as ``tune/gpu`` (prefect.yaml). Run locally: ``python -m flows.tuning``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from bertrec.config import DEFAULT_PARAMS, load_params
from flows.common import enter_project
from flows.overrides import ParamsOverrides
from tasks.stages import stage_task, stream

DATA_STAGES = ("fetch", "prepare", "split")  # what a search reads: the splits


@task(task_run_name="tune worker {worker}: {trials} trials")
def tune_worker(project: Path, trials: int, worker: int) -> list[str]:
    """``bertrec tune --trials N --worker W`` in ``project``: its trials join the study."""
    return stream(project, "bertrec", "tune", "--trials", str(trials), "--worker", str(worker))


def shares(trials: int, workers: int) -> list[int]:
    """``trials`` split over ``workers`` as evenly as possible (no worker without a trial)."""
    workers = max(1, min(workers, trials))
    return [trials // workers + (1 if w < trials % workers else 0) for w in range(workers)]


@flow(name="tune", log_prints=True)
def tune(trials: int = 20, workers: int = 1, overrides: ParamsOverrides | None = None, project_dir: str = ".") -> dict:
    """Run ``trials`` trials of the study of params.yaml's ``tune`` section with ``workers`` processes at once.

    Args:
        trials: trials this run adds to the study.
        workers: processes running trials at the same time (on one GPU, several share it).
        overrides: values that replace those of params.yaml for this run (the search space too:
            ``tune.space``), written into params.yaml as for the training pipeline.
        project_dir: the project checkout.
    """
    from bertrec.mlops.tracking import connect
    from bertrec.mlops.tune import create_study, report

    logger = get_run_logger()
    project, sets = enter_project(project_dir, overrides)
    for stage in DATA_STAGES:
        stage_task(stage)(project, stage)
    p = load_params(project / DEFAULT_PARAMS)
    client = connect(p)
    study, parent = create_study(p, client)  # once, before the workers: one parent run
    logger.info("study %s, MLflow parent run %s: %d trials on %d workers", p.tune.study, parent, trials, workers)
    futures = [tune_worker.submit(project, n, w) for w, n in enumerate(shares(trials, workers))]
    for future in futures:
        future.result()
    outcome = report(study, p, project / DEFAULT_PARAMS, [], client, parent)
    create_markdown_artifact(
        f"## Study `{outcome.name}`\n\n{outcome.summary().splitlines()[0]}\n\n```diff\n{outcome.diff}```\n",
        key="tune-summary",
        description="The study's best trial and the params.yaml diff it makes",
    )
    return {
        "study": outcome.name,
        "parent_run_id": outcome.parent_run_id,
        "best_value": outcome.best_value,
        "best_params": outcome.best_params,
        "states": outcome.states,
        "diff": outcome.diff,
    }


if __name__ == "__main__":
    print(tune())
