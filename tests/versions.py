"""Registered versions for tests: a bundle's CLI arguments as params, champions copied from versions."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from bertrec.config import load_params
from bertrec.mlops.registry import CHALLENGER, CHAMPION, PREVIOUS, alias_version

HISTORY = ["3", "4", "5", "6"]


def overrides(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def params_of(args: list[str], model: str):
    return load_params(args[1], [*overrides(args), f"mlflow.registered_model={model}"])


def given_champion(uri: str, source: tuple[str, str], model: str) -> str:
    """Make a copy of the registered ``source`` version (tags too) the champion of ``model``; returns its version.

    For tests whose subject comes after the registration: the copy is what `register` left for the
    bundle, without its upload and gate being run again.
    """
    client = MlflowClient(uri, uri)
    name, version = source
    copied = client.copy_model_version(f"models:/{name}/{version}", model)
    for key, value in client.get_model_version(name, version).tags.items():
        client.set_model_version_tag(model, copied.version, key, value)
    for alias in (CHAMPION, CHALLENGER):
        client.set_registered_model_alias(model, alias, copied.version)
    return str(copied.version)


def aliases(p) -> dict[str, str | None]:
    client = MlflowClient(p.mlflow.tracking_uri, p.mlflow.tracking_uri)
    return {a: alias_version(client, p.mlflow.registered_model, a) for a in (CHAMPION, CHALLENGER, PREVIOUS)}
