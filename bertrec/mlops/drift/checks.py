"""Drift checks between a reference window and a current one, on Evidently 0.7.

Each check is a pure function that returns a :class:`DriftCheck`: the decision, the score and
threshold it was made on, the numbers that explain it, and Evidently's run for the HTML.

- :func:`check_interactions`: Evidently's ``DataDriftPreset`` over per-interaction features
  (:func:`interaction_features`); drift when the share of drifted columns >= ``drift.drift_share``.
- :func:`check_embeddings`: Evidently's ``EmbeddingsDrift`` between the catalogue's item vectors and
  those of newly arrived items; drift when the method's score > its threshold (Evidently's rule).
- :func:`check_predictions`: one Evidently drift test per column of what a model recommends
  (:func:`prediction_features`); drift when any column drifts.

:func:`write_verdict` writes Evidently's HTML of every check and ``verdict.json``, atomically.
Evidently is imported inside the functions: importing it takes several seconds.

Evidently's recsys metrics, computed beside ours on the same top-K lists, are in bertrec.drift_recsys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bertrec.config import DriftParams
from bertrec.io import atomic_dir

INTERACTIONS, EMBEDDINGS, PREDICTIONS = "interactions", "embeddings", "predictions"
NUMERICAL_FEATURES = ("user_activity", "item_popularity", "rating", "hour")
GENRE, UNKNOWN_GENRE = "genre", "unknown"
PREDICTION_COLUMNS = ("rec_popularity", "top_score")
EMBEDDING_NAME = "item_vectors"
VERDICT_FILE = "verdict.json"


@dataclass(frozen=True)
class DriftCheck:
    """One check: ``drift`` was decided on ``score`` against ``threshold``; ``details`` explain it."""

    name: str
    drift: bool
    score: float
    threshold: float
    details: dict[str, Any]  # JSON-serialisable; "rule" states how drift follows from score and threshold
    run: Any = field(default=None, compare=False, repr=False)  # Evidently's Snapshot, for the HTML

    def summary(self) -> dict[str, Any]:
        """What verdict.json holds for this check (everything but the Evidently run); a NaN score is null."""
        score = None if np.isnan(self.score) else self.score
        return _plain({"drift": self.drift, "score": score, "threshold": self.threshold, "details": self.details})

    @classmethod
    def skipped(cls, name: str, threshold: float, reason: str) -> DriftCheck:
        """A check that could not be run on these windows (too few new items, ...): no drift, no score."""
        return cls(name, False, float("nan"), threshold, {"skipped": reason})


@dataclass(frozen=True)
class Verdict:
    """All checks of a window; ``drift`` when any of them drifted."""

    drift: bool
    checks: tuple[DriftCheck, ...]

    def __post_init__(self) -> None:
        if self.drift != any(check.drift for check in self.checks):
            raise ValueError(f"verdict drift={self.drift} but checks say {[(c.name, c.drift) for c in self.checks]}")

    @classmethod
    def of(cls, checks: Iterable[DriftCheck]) -> Verdict:
        checks = tuple(checks)
        return cls(any(check.drift for check in checks), checks)


# --- features ------------------------------------------------------------------------------------


def interaction_features(interactions: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """One row per interaction: ``user_activity``, ``item_popularity``, [``rating``], ``hour``, ``genre``.

    Activity and popularity are counts within this window, so compare windows of equal length.

    Args:
        interactions: ``user_id``, ``item_id``, ``timestamp`` (epoch seconds, UTC; or datetimes),
            optionally ``rating``.
        items: ``item_id`` and ``genres`` (a list, or a string "a, b" or "a|b"); the first genre is
            kept, "unknown" for an item without genres or missing from the table.

    Raises:
        ValueError: a column is missing, item ids repeat, or a timestamp is not a time.
    """
    _require(interactions, ("user_id", "item_id", "timestamp"), "interactions")
    _require(items, ("item_id", "genres"), "items")
    if items["item_id"].duplicated().any():
        repeated = items.loc[items["item_id"].duplicated(), "item_id"].head(3).tolist()
        raise ValueError(f"items: column 'item_id' repeats values, e.g. {repeated}")
    first_genre = pd.Series([_first_genre(g) for g in items["genres"]], index=items["item_id"].to_numpy())
    frame = pd.DataFrame(
        {
            "user_activity": interactions.groupby("user_id")["user_id"].transform("size").to_numpy(np.int64),
            "item_popularity": interactions.groupby("item_id")["item_id"].transform("size").to_numpy(np.int64),
        }
    )
    if "rating" in interactions:
        frame["rating"] = interactions["rating"].to_numpy(np.float64)
    frame["hour"] = _hours(interactions["timestamp"])
    frame[GENRE] = interactions["item_id"].map(first_genre).fillna(UNKNOWN_GENRE).to_numpy(object)
    return frame


def prediction_features(topk: np.ndarray, top_scores: np.ndarray, popularity: np.ndarray) -> pd.DataFrame:
    """The input of :func:`check_predictions`: one row per filled top-K slot.

    ``rec_popularity`` is the slot's item popularity; ``top_score`` is set on each user's first row
    (their first recommendation's score) and NaN elsewhere, which Evidently's tests skip.

    Args:
        topk: (users, K) recommended item indices, -1 where no item.
        top_scores: (users,) score of each user's first recommendation.
        popularity: (n_items,) training interactions per item.
    """
    if len(top_scores) != len(topk):
        raise ValueError(f"top_scores has {len(top_scores)} values for {len(topk)} top-K lists")
    users, slots = np.nonzero(topk >= 0)  # row-major: each user's slots in rank order
    first = np.r_[True, users[1:] != users[:-1]] if len(users) else np.zeros(0, dtype=bool)
    top = np.where(first, np.asarray(top_scores, dtype=np.float64)[users], np.nan)
    return pd.DataFrame({"rec_popularity": popularity[topk[users, slots]].astype(np.float64), "top_score": top})


def draw_user_sample(user_ids: np.ndarray, params: DriftParams) -> np.ndarray:
    """A fixed, sorted sample of ``params.sample_users`` distinct users (all when fewer), drawn with ``params.seed``."""
    users = np.unique(user_ids)
    rng = np.random.default_rng(params.seed)
    return np.sort(rng.choice(users, size=min(params.sample_users, len(users)), replace=False))


# --- checks --------------------------------------------------------------------------------------


def check_interactions(
    reference: pd.DataFrame, current: pd.DataFrame, items: pd.DataFrame, params: DriftParams
) -> DriftCheck:
    """Evidently's ``DataDriftPreset`` over :func:`interaction_features` of both windows.

    Drift when the share of drifted columns >= ``params.drift_share``. Each column's test is
    ``params.stattest`` (default: Evidently's choice by type and size: KS or chi-squared up to 1,000
    reference rows, Wasserstein or Jensen-Shannon distance above) at ``params.stattest_threshold``.

    Raises:
        ValueError: see :func:`interaction_features`; or one window has ratings and the other not.
    """
    ref, cur = interaction_features(reference, items), interaction_features(current, items)
    if list(ref.columns) != list(cur.columns):
        raise ValueError(
            f"reference has columns {list(ref.columns)}, current {list(cur.columns)}; "
            "'rating' must be in both windows or in neither"
        )
    numerical = [c for c in NUMERICAL_FEATURES if c in ref]
    run, share, columns = _column_drift(
        ref, cur, numerical, [GENRE], params.drift_share, params.stattest, params.stattest_threshold
    )
    details = {
        "rule": "share of drifted columns >= drift_share",
        "share_drifted": share,
        "columns": columns,
        "genre_share": _shares(ref[GENRE], cur[GENRE]),
        "rows": {"reference": len(ref), "current": len(cur)},
    }
    return DriftCheck(INTERACTIONS, share >= params.drift_share, share, params.drift_share, _plain(details), run)


def check_embeddings(catalogue: np.ndarray, new: np.ndarray, params: DriftParams) -> DriftCheck:
    """Evidently's ``EmbeddingsDrift`` of the new items' vectors against the catalogue's.

    The method is ``params.embedding_method`` (model: ROC AUC of a classifier told apart the two sets;
    mmd: maximum mean discrepancy; distance: distance between the means; ratio: share of drifted
    components), without bootstrap, so the score is deterministic; drift when the score is above
    ``params.embedding_threshold`` (default: the method's own).

    Args:
        catalogue: (n_catalogue, dim) vectors of the items already known.
        new: (n_new, dim) vectors of the newly arrived items.

    Raises:
        ValueError: not two matrices of the same width with at least two finite rows each.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift

    _check_vectors(catalogue, new)
    columns = [f"dim_{i}" for i in range(catalogue.shape[1])]
    definition = DataDefinition(numerical_columns=columns, embeddings={EMBEDDING_NAME: columns})
    method = embedding_method(params)
    run = Report([EmbeddingsDrift(embeddings_name=EMBEDDING_NAME, drift_method=method)]).run(
        Dataset.from_pandas(pd.DataFrame(new, columns=columns), data_definition=definition),
        Dataset.from_pandas(pd.DataFrame(catalogue, columns=columns), data_definition=definition),
    )
    score = float(run.dict()["metrics"][0]["value"])
    details = {
        "rule": "score > threshold",
        "method": params.embedding_method,
        "rows": {"catalogue": len(catalogue), "new": len(new)},
        "dim": catalogue.shape[1],
        "centroid_distance": float(np.linalg.norm(catalogue.mean(axis=0) - new.mean(axis=0))),
        "mean_norm": {
            "catalogue": float(np.linalg.norm(catalogue, axis=1).mean()),
            "new": float(np.linalg.norm(new, axis=1).mean()),
        },
    }
    return DriftCheck(EMBEDDINGS, score > method.threshold, score, float(method.threshold), _plain(details), run)


def check_predictions(reference: pd.DataFrame, current: pd.DataFrame, params: DriftParams) -> DriftCheck:
    """One Evidently drift test per column of :func:`prediction_features` (``rec_popularity``, ``top_score``).

    Typically the champion's recommendations for a fixed user sample (:func:`draw_user_sample`) on
    the reference window and on the current one. Rule: drift when ANY column drifts, i.e. the share of
    drifted columns >= 1 / number of columns. Tests: ``params.stattest`` (default: Evidently's choice)
    at ``params.prediction_threshold``; NaN values are skipped.
    """
    columns = list(PREDICTION_COLUMNS)
    _require(reference, columns, "reference predictions")
    _require(current, columns, "current predictions")
    any_share = 1.0 / len(columns)
    run, share, drifted = _column_drift(
        reference, current, columns, [], any_share, params.stattest, params.prediction_threshold
    )
    details = {
        "rule": "any column drifted (share of drifted columns >= 1 / columns)",
        "share_drifted": share,
        "columns": drifted,
        "rows": {"reference": len(reference), "current": len(current)},
    }
    return DriftCheck(PREDICTIONS, share >= any_share, share, any_share, _plain(details), run)


# --- verdict -------------------------------------------------------------------------------------


def write_verdict(
    verdict: Verdict, folder: Path, context: dict[str, Any] | None = None, reports: dict[str, Any] | None = None
) -> Path:
    """Write ``<check>.html`` (Evidently's report) per check and ``verdict.json``; return the JSON's path.

    ``folder`` is replaced atomically. A check without an Evidently run gets no HTML. ``context``
    (windows, model, ...) is added to the JSON's top level; ``reports`` are further Evidently runs,
    written as ``<name>.html``.

    Raises:
        ValueError: two checks share a name.
    """
    names = [check.name for check in verdict.checks]
    if len(set(names)) != len(names):
        raise ValueError(f"check names must be unique; got {names}")
    payload = _plain(context or {}) | {
        "drift": verdict.drift,
        "checks": {check.name: check.summary() for check in verdict.checks},
    }
    runs = {check.name: check.run for check in verdict.checks if check.run is not None} | (reports or {})
    with atomic_dir(Path(folder)) as tmp:
        for name, run in runs.items():
            run.save_html(str(tmp / f"{name}.html"))  # Evidently writes only to a str path
        (tmp / VERDICT_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(folder) / VERDICT_FILE


# --- helpers -------------------------------------------------------------------------------------


def _column_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numerical: Sequence[str],
    categorical: Sequence[str],
    drift_share: float,
    method: str | None,
    threshold: float | None,
    num_method: str | None = None,
    cat_method: str | None = None,
) -> tuple[Any, float, dict[str, dict[str, Any]]]:
    """Run ``DataDriftPreset`` with its tests; return the run, the share of drifted columns, and per column
    the test, score (p-value or distance), threshold, drifted, and for numbers the two means.

    ``method`` is the test of every column; ``num_method`` and ``cat_method`` those of one type."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [*numerical, *categorical]
    definition = DataDefinition(numerical_columns=list(numerical), categorical_columns=list(categorical))
    preset = DataDriftPreset(
        columns=columns,
        drift_share=drift_share,
        method=method,
        threshold=threshold,
        num_method=num_method,
        cat_method=cat_method,
    )
    run = Report([preset], include_tests=True).run(
        Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
    )
    result = run.dict()
    status = {t["metric_config"]["metric_id"]: t["status"] for t in result["tests"]}
    share, out = None, {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif config["type"].endswith(":ValueDrift"):
            out[config["column"]] = {
                "test": config["method"],
                "score": float(metric["value"]),  # a p-value or a distance, as the test says
                "threshold": float(config["threshold"]),
                "drifted": status[metric["id"]] == "FAIL",
            }
    if share is None or set(out) != set(columns):
        raise RuntimeError(f"Evidently's drift report lacks columns {sorted(set(columns) - set(out))} or the share")
    for name in numerical:
        out[name]["mean"] = {"reference": float(reference[name].mean()), "current": float(current[name].mean())}
    return run, share, out


def embedding_method(params: DriftParams) -> Any:
    """Evidently's embedding drift method of params, with its threshold (``.threshold``)."""
    from evidently.metrics.embeddings import DistanceDriftMethod, MMDDriftMethod, ModelDriftMethod, RatioDriftMethod

    kinds = {
        "model": ModelDriftMethod,
        "mmd": MMDDriftMethod,
        "distance": DistanceDriftMethod,
        "ratio": RatioDriftMethod,
    }
    method = kinds[params.embedding_method]
    return method() if params.embedding_threshold is None else method(threshold=params.embedding_threshold)


def _first_genre(genres: Any) -> str:
    if isinstance(genres, str):
        parts: list[Any] = re.split(r"[|,]", genres)
    elif isinstance(genres, (list, tuple, np.ndarray, pd.Series)):
        parts = list(genres)
    elif genres is None or pd.isna(genres):
        return UNKNOWN_GENRE
    else:
        parts = [genres]
    named = [str(part).strip() for part in parts if part is not None and str(part).strip()]
    return named[0] if named else UNKNOWN_GENRE


def _hours(timestamps: pd.Series) -> np.ndarray:
    """Hour of day (UTC) of epoch seconds or datetimes."""
    if pd.api.types.is_datetime64_any_dtype(timestamps):
        stamps = timestamps.dt.tz_localize("UTC") if timestamps.dt.tz is None else timestamps.dt.tz_convert("UTC")
        return stamps.dt.hour.to_numpy(np.int64)
    if not pd.api.types.is_numeric_dtype(timestamps):
        raise ValueError(f"interactions: column 'timestamp' is {timestamps.dtype}; expected epoch seconds or datetimes")
    seconds = timestamps.to_numpy(np.float64)
    if np.isnan(seconds).any():
        raise ValueError(f"interactions: column 'timestamp' has {int(np.isnan(seconds).sum())} missing values")
    return (np.floor(seconds / 3600.0) % 24).astype(np.int64)


def _shares(reference: pd.Series, current: pd.Series) -> dict[str, dict[str, float]]:
    """Share of rows per value in each window, over the values of both."""
    values = sorted(set(reference) | set(current))
    ref, cur = reference.value_counts(normalize=True), current.value_counts(normalize=True)
    return {
        "reference": {v: float(ref.get(v, 0.0)) for v in values},
        "current": {v: float(cur.get(v, 0.0)) for v in values},
    }


def _check_vectors(catalogue: np.ndarray, new: np.ndarray) -> None:
    for name, matrix in (("catalogue", catalogue), ("new", new)):
        if matrix.ndim != 2 or len(matrix) < 2:
            raise ValueError(f"{name} vectors have shape {matrix.shape}; expected (rows >= 2, dim)")
        if not np.isfinite(matrix).all():
            raise ValueError(f"{name} vectors hold {int((~np.isfinite(matrix)).sum())} non-finite values")
    if catalogue.shape[1] != new.shape[1]:
        raise ValueError(f"catalogue vectors have dim {catalogue.shape[1]}, new ones {new.shape[1]}")


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; it has {list(frame.columns)}")


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones, so that json.dumps takes it."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
