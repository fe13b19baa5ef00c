"""The typed overrides of params.yaml that a flow run takes; the Prefect UI shows them as a form.

``ParamsOverrides`` mirrors :class:`bertrec.config.Params` with every field optional, so a run
started from the UI sets only what it changes; :func:`override_sets` turns it into the
``section.key=value`` overrides that :func:`bertrec.config.apply_overrides` writes into params.yaml.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model

from bertrec.config import Params, flatten


def _optional_mirror(model: type[BaseModel], name: str) -> type[BaseModel]:
    """A copy of ``model`` whose every field is optional with default None (sections recursively)."""
    fields: dict[str, Any] = {}
    for key, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            annotation = _optional_mirror(annotation, f"{annotation.__name__.removesuffix('Params')}Overrides")
        default = field.default if field.default_factory is None else field.default_factory()
        described = f"params.yaml default: {default!r}" if not isinstance(default, BaseModel) else None
        fields[key] = (annotation | None, Field(None, description=described))
    return create_model(name, __config__=ConfigDict(frozen=True, extra="forbid"), __doc__=model.__doc__, **fields)


# The typed overrides of params.yaml that a flow run takes (the Prefect UI shows them as a form).
ParamsOverrides = _optional_mirror(Params, "ParamsOverrides")


def override_sets(overrides: BaseModel | dict[str, Any] | None) -> list[str]:
    """``ParamsOverrides`` (or its dict) -> ``["train.lr=0.001", ...]`` for the fields that are set."""
    if overrides is None:
        return []
    tree = overrides.model_dump(mode="json", exclude_none=True) if isinstance(overrides, BaseModel) else overrides
    tree = ParamsOverrides.model_validate(tree).model_dump(mode="json", exclude_none=True)
    return [
        f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        for key, value in flatten(tree).items()
    ]
