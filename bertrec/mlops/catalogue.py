"""A catalogue update: new items live without retraining, as a new version of the champion.

:func:`update_catalogue` reads a file of new items (:mod:`bertrec.data.new_items`), then:

1. downloads the champion and refuses ids it already has (nothing is registered on bad input);
2. writes a new bundle with the items placed from their text, the champion's weights unchanged
   (:func:`bertrec.serve.extend.extend_bundle`);
3. measures the cold-item guardrail (``catalogue.guardrail``, ``cold_items/test_all/Hit@10``) for
   the champion and for the new version on the current data, as the promotion gate does, except
   that each ranks its whole catalogue: the new items, which no test user can have taken, may push
   what users do take out of the top K, and count as misses where they do;
4. decides (:func:`decide_catalogue_update`: the guardrail may drop by ``catalogue.max_drop`` at
   most) and registers the version (tags ``bertrec.kind=catalogue-update``, ``catalogue.added``,
   ``parent.version``, the parent's data and gate-metric tags);
5. under the registry lock, when the decision says so and the champion is still the parent, makes
   it champion (the old one ``previous``); it is ``challenger`` either way. If the champion moved
   meanwhile (a retraining was promoted), nothing moves and the error says so.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from bertrec.config import Params
from bertrec.data.dataset import Dataset, load_dataset
from bertrec.data.new_items import NewItems, read_new_items
from bertrec.errors import RegistryError
from bertrec.mlops.gate import GATED_TAG, Check, Decision, decision_record
from bertrec.mlops.registry import (
    BUNDLE_TAG,
    CHAMPION,
    DATA_END_TAG,
    alias_version,
    bundle_fingerprint,
    download_version,
    find_bundle,
    lock_for,
    log_bundle,
    register_version,
    set_aliases,
)
from bertrec.mlops.tracking import connect, mlflow_name
from bertrec.ranking.scoring import Histories, Scorer
from bertrec.serve.extend import extend_bundle
from bertrec.serve.recommender import CatalogueScorer, Recommender

log = logging.getLogger(__name__)

KIND_TAG, KIND = "bertrec.kind", "catalogue-update"
ADDED_TAG, PARENT_TAG = "catalogue.added", "parent.version"
PARENT_TAGS = ("data.sha256", "data.window", DATA_END_TAG)  # what the version was trained on: its parent's
EXAMPLE_HISTORY = 5


class WholeCatalogueScorer(Scorer):
    """The gate's scorer (:class:`CatalogueScorer`) ranking, beside the data's items, the version's others.

    Items of the version that the data does not list (those of catalogue updates) take part in the
    ranking; a top-K slot they take is a miss (-1), as no test user can have taken them.
    """

    name = "bertrec"

    def __init__(self, recommender: Recommender, items, text_only: np.ndarray | None) -> None:
        self.base = CatalogueScorer(recommender, items, text_only)
        listed = set(items["item_id"].astype(str))
        self.n_items = len(items)
        self.beyond = np.array([i for i, item in enumerate(recommender.item_ids) if item not in listed], np.int64)

    def fit(self, train) -> WholeCatalogueScorer:  # already trained
        return self

    def score(self, histories: Histories) -> np.ndarray:
        scores = self.base.score(histories)  # (batch, n_items)
        if not len(self.beyond):
            return scores
        recommender = self.base.recommender
        users = recommender.user_vectors_of_rows(Histories(histories.indptr, self.base.rows[histories.items]))
        extra = (users @ recommender.vectors[self.beyond].T) / recommender.scorer.model.config.temperature
        penalty = recommender.scorer.penalty
        if penalty is not None:
            extra = extra - penalty[self.beyond]
        return np.hstack([scores, extra])  # (batch, n_items + beyond)

    def recommend(self, histories: Histories, k: int, exclude=None, candidates=None) -> np.ndarray:
        top = super().recommend(histories, k, exclude, candidates)
        top[top >= self.n_items] = -1
        return top


def guardrail_score(recommender: Recommender, data: Dataset, p: Params) -> float:
    """``catalogue.guardrail`` of a loaded version on the current data, ranking its whole catalogue."""
    from bertrec.data.split import read_split
    from bertrec.ranking.evaluate import evaluate_split

    split_name, target, metric = p.catalogue.guardrail.split("/")
    split = read_split(p.paths.splits, split_name, data.n_users, data.n_items)
    scorer = WholeCatalogueScorer(recommender, data.items, split.new_items)
    results = evaluate_split([scorer], split, data.items, p.eval.ks, p.eval.batch_size)
    values = results[scorer.name].get(target, {})
    if metric not in values:
        raise RegistryError(f"catalogue.guardrail {p.catalogue.guardrail}: split {split_name} gives {sorted(values)}")
    return float(values[metric])


def decide_catalogue_update(
    new: float, champion: float, metric: str, max_drop: float, added: int, champion_version: str
) -> Decision:
    """Whether the version with ``added`` new items replaces the champion: ``metric`` may drop by ``max_drop`` at most.

    ``new`` and ``champion`` are the metric of each version ranking its own whole catalogue.
    """
    change = (new - champion) / abs(champion) if champion else (0.0 if new == champion else np.sign(new) * np.inf)
    check = Check(
        f"guardrail {metric}",
        change >= -max_drop,
        f"{metric} {new:.4f} with the {added} new item(s) vs champion (version {champion_version}) "
        f"{champion:.4f} without ({change:+.2%}; may drop at most {max_drop:.0%})",
    )
    if check.passed:
        return Decision(True, f"promote: the new items leave the catalogue's ranking intact: {check.detail}", (check,))
    return Decision(False, f"keep the champion: the new items push out what users take: {check.detail}", (check,))


@dataclass(frozen=True)
class CatalogueUpdate:
    version: str
    parent: str  # the champion the items were added to
    added: int
    registered: bool  # False when this very bundle was a version already (a retried update)
    decision: Decision
    champion: str  # after the update
    model: str

    def summary(self) -> str:
        verdict = "PROMOTED to champion" if self.champion == self.version else "stays challenger"
        head = f"{self.model} version {self.version}: version {self.parent} with {self.added} new item(s), {verdict}"
        return f"{head}\n  {self.decision.reason}\nchampion: {self.model} version {self.champion}"


def update_catalogue(p: Params, items_path: Path, run_tags: dict[str, str] | None = None) -> CatalogueUpdate:
    """Add the items of ``items_path`` to the champion as a new version; promote it if the guardrail holds.

    ``run_tags`` are added to the MLflow run (e.g. the Prefect flow run).

    Raises:
        DataError: bad input (see :func:`bertrec.data.new_items.read_new_items`), or ids the champion
            already has; nothing is registered then.
        RegistryError: no champion, or the champion moved during the update (the version is then
            registered and stays challenger).
    """
    new = read_new_items(items_path, p.data)  # before anything else: a bad file changes nothing
    client = connect(p)
    name = p.mlflow.registered_model
    data = load_dataset(p.paths.prepared)
    with tempfile.TemporaryDirectory(prefix="bertrec-catalogue-") as tmp:
        parent = alias_version(client, name, CHAMPION)
        if parent is None:
            raise RegistryError(f"{name} has no champion at {p.mlflow.tracking_uri}; register a model first")
        source = download_version(client, name, parent, Path(tmp) / "parent")
        champion = Recommender(source, p.train.device)
        new.refuse_known(set(champion.item_ids), f"{name} version {parent}")
        bundle = Path(tmp) / "bundle"
        added = extend_bundle(source, bundle, new.items, p.train.device)
        before = guardrail_score(champion, data, p)
        after = guardrail_score(Recommender(bundle, p.train.device), data, p)
        decision = decide_catalogue_update(after, before, p.catalogue.guardrail, p.catalogue.max_drop, added, parent)
        log.info("catalogue update of %s version %s: %s", name, parent, decision.reason)
        version, registered = _register(client, p, new, bundle, parent, data, run_tags, decision, (before, after))
    with lock_for(p):  # the aliases move under the lock, and only if the champion is still the parent
        if alias_version(client, name, CHAMPION) != parent:
            client.set_model_version_tag(name, version, GATED_TAG, "false")
            raise RegistryError(
                f"the champion of {name} moved from version {parent} during the catalogue update; "
                f"version {version} stays unpromoted (add the items again to the new champion)"
            )
        champion_after = set_aliases(client, name, version, parent, decision.promote)
        client.set_model_version_tag(name, version, GATED_TAG, str(decision.promote).lower())
    return CatalogueUpdate(version, parent, added, registered, decision, champion_after, name)


def _register(
    client,
    p: Params,
    new: NewItems,
    bundle: Path,
    parent: str,
    data: Dataset,
    run_tags: dict[str, str] | None,
    decision: Decision,
    scores: tuple[float, float],
) -> tuple[str, bool]:
    """One MLflow run for the update, the bundle logged and registered (unless it is a version already)."""
    name = p.mlflow.registered_model
    fingerprint = bundle_fingerprint(bundle)
    parent_tags = client.get_model_version(name, parent).tags
    metric = mlflow_name(p.catalogue.guardrail)
    # The parent's data, and its gate metrics: the gate scores the data's items only, whose vectors are the parent's
    inherited = [*PARENT_TAGS, *(mlflow_name(k) for k in (p.promotion.metric, *p.promotion.guardrails))]
    tags = {k: parent_tags[k] for k in inherited if k in parent_tags} | {
        KIND_TAG: KIND,
        ADDED_TAG: str(len(new.items)),
        PARENT_TAG: parent,
        "catalogue.file_sha256": hashlib.sha256(new.table.path.read_bytes()).hexdigest(),
        f"catalogue.{metric}": f"{scores[1]:.6g}",
        f"gate.champion.{metric}": f"{scores[0]:.6g}",
        "gate.reason": decision.reason,
        "gate.champion_before": parent,
        BUNDLE_TAG: fingerprint,
    }
    with mlflow.start_run(run_name=f"catalogue-update of version {parent}") as run:
        mlflow.set_tags({KIND_TAG: KIND, PARENT_TAG: parent, ADDED_TAG: str(len(new.items)), **(run_tags or {})})
        mlflow.log_metrics({f"catalogue/champion/{metric}": scores[0], f"catalogue/new/{metric}": scores[1]})
        mlflow.log_artifact(str(new.table.path), "catalogue")
        version = find_bundle(client, name, fingerprint)
        registered = version is None
        if version is None:
            scoped = p.model_copy(update={"paths": p.paths.model_copy(update={"bundle": bundle})})
            history = data.interactions["item_id"].astype(str).tolist()[:EXAMPLE_HISTORY]
            version = register_version(client, p, log_bundle(scoped, history), tags | {"run_id": run.info.run_id})
        else:
            log.info("this bundle is already version %s of %s; gating it", version, name)
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
        mlflow.set_tags({"registry.version": version, "gate.promote": str(decision.promote).lower()})
        expected = version if decision.promote else parent  # the champion after, unless it moves meanwhile
        mlflow.log_text(decision_record(decision, version, expected), "gate/decision.json")
    return version, registered
