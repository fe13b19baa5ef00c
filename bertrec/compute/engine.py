"""The engine a stage runs its heavy part on: :class:`LocalEngine` (this process) or :class:`RayEngine`.

Both answer the same two calls: :meth:`Engine.put` (an object every part reads: a model, a
catalogue) and :meth:`Engine.map` (one function over contiguous parts, results in order). On Ray,
``put`` stores the object once in the object store and each part is a task with
``compute.cpus_per_worker`` CPUs and ``compute.gpus_per_worker`` GPUs; a task whose worker dies is
run again (``compute.max_failures`` times), so a crash costs time, never a different result.
Everything the stages distribute beyond that (Ray Data for embed, Ray Train for train) connects
through :func:`connect` here. ``import ray`` happens only on the Ray path: the local engine needs
no Ray installed.
"""

from __future__ import annotations

import logging
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from bertrec.config import ComputeParams
from bertrec.errors import ConfigError

log = logging.getLogger(__name__)

# Environment a Ray worker needs to load models as this process does (offline, from the same HF cache).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE")


def parts(n: int, k: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into at most ``k`` contiguous, non-empty ranges of near-equal size."""
    k = max(1, min(k, n))
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


class Engine(ABC):
    """Runs a function over parts of a stage's work; see the module docstring."""

    name: str
    workers: int

    @abstractmethod
    def where(self) -> str:
        """Where the work runs, for the stage's log: ``this process`` or the cluster and its workers."""

    @abstractmethod
    def put(self, value: Any) -> Any:
        """A handle to ``value`` that :meth:`map` passes to every part (stored once)."""

    @abstractmethod
    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list[Any]:
        """``[fn(value of shared, item) for item in items]``, in order; on Ray each item is a task."""

    def parts(self, n: int) -> list[tuple[int, int]]:
        """``[0, n)`` in one contiguous range per worker."""
        return parts(n, self.workers)


class LocalEngine(Engine):
    """This process: one worker, nothing shipped anywhere."""

    name = "local"
    workers = 1

    def where(self) -> str:
        return "this process"

    def put(self, value: Any) -> Any:
        return value

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list[Any]:
        return [fn(shared, item) for item in items]


def _apply(fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:  # the body of every Ray task
    return fn(shared, item)


class RayEngine(Engine):
    """A Ray cluster (``compute.address``): parts are tasks, shared objects live in the object store."""

    name = "ray"

    def __init__(self, compute: ComputeParams) -> None:
        self.compute = compute
        self.workers = compute.workers
        self.address = connect(compute)

    def where(self) -> str:
        c = self.compute
        gpus = f", {c.gpus_per_worker:g} GPU" if c.gpus_per_worker else ""
        return f"Ray at {self.address}, {c.workers} workers x {c.cpus_per_worker:g} CPU{gpus}"

    def put(self, value: Any) -> Any:
        import ray

        return ray.put(value)

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list[Any]:
        import ray

        task = ray.remote(_apply).options(
            num_cpus=self.compute.cpus_per_worker,
            num_gpus=self.compute.gpus_per_worker,
            max_retries=self.compute.max_failures,  # a dead worker's task runs again; exceptions are not retried
        )
        return ray.get([task.remote(fn, shared, item) for item in items])


def connect(compute: ComputeParams) -> str:
    """Join the Ray cluster of ``compute.address`` (once per process) and return its address.

    ``local`` starts a private Ray instance with the CPUs the stage asks for (at least this
    machine's). Raises ConfigError when Ray is not installed or no cluster answers.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("compute.engine is ray, but Ray is not installed: pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        options: dict[str, Any] = {
            "runtime_env": {"env_vars": env} if env else None,
            "logging_level": logging.WARNING,
            "configure_logging": False,
        }
        if compute.address == "local":
            needed = compute.workers * compute.cpus_per_worker
            options |= {"num_cpus": max(int(needed + 0.999), os.cpu_count() or 1), "include_dashboard": False}
        else:
            options["address"] = compute.address
            _answers(compute.address)
        try:
            ray.init(**options)
        except ConnectionError as exc:
            raise ConfigError(
                f"compute.address={compute.address}: no Ray cluster answers ({exc}); start one with "
                "`ray start --head`, give its address, or set compute.address=local"
            ) from None
    _check_resources(compute)
    return ray.get_runtime_context().gcs_address


def _answers(address: str, timeout: float = 5.0) -> None:
    """Fail fast when a ``host:port`` address takes no connection (``ray.init`` would retry for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"compute.address={address}: no Ray cluster answers ({exc}); start one with `ray start --head`, "
            "give its address, or set compute.address=local"
        ) from None


def _check_resources(compute: ComputeParams) -> None:
    import ray

    have = ray.cluster_resources()
    for name, per_worker in (("CPU", compute.cpus_per_worker), ("GPU", compute.gpus_per_worker)):
        needed = compute.workers * per_worker
        if needed > have.get(name, 0.0):
            log.warning(
                "the Ray cluster has %g %s; %d workers need %g: they wait for the autoscaler or run in turns",
                have.get(name, 0.0),
                name,
                compute.workers,
                needed,
            )


def engine_for(compute: ComputeParams) -> Engine:
    """The engine ``compute.engine`` names."""
    return RayEngine(compute) if compute.engine == "ray" else LocalEngine()


def announce(stage: str, engine: Engine, what: str) -> None:
    """The stage's log line saying where ``what`` runs."""
    log.info("%s: %s on %s", stage, what, engine.where())
