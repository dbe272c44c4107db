"""Executors: run zoo models, each in its own worker process, and hand back each ledger row as the model finishes.

``local`` (the default): a pool of ``jobs`` threads in the zoo's process, each driving one forked worker
(``onnxgate.worker.run_in_worker``) at a time: with a timeout and a cap on the private memory of the model's whole
process tree (a subprocess its build starts counts, and is stopped with it), and the model's crash, hang or memory
hog turned into its ledger row. ``ray``: each model is a Ray task declaring its CPUs and memory; inside the task
the model still runs through ``run_in_worker`` (a segfault kills that worker, not the Ray worker), and the rows are
streamed back with ``ray.wait`` as tasks finish. The row is made where the model ran (it reads the model's folder),
so on a cluster without a shared file system the ledger is still complete; the model folders stay on the nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from ..worker import CRASHED, WorkerOutcome, default_memory_mb, run_in_worker
from .spec import ZooModel
from .task import ledger_row, prove

OnRow = Callable[[dict[str, Any]], None]


_WARM: list[bool] = []


def dynamo_models(models: list[ZooModel]) -> int:
    return sum(m.run.export.strategy in (None, "dynamo") for m in models)


def warm_imports(dynamo: bool) -> None:
    """Import torch and the pipeline before forking workers, and (``dynamo``: when two or more models per process
    may use that exporter) run one tiny dynamo export: every fork (a model's worker, and the export attempts it forks in turn) then starts with
    them loaded and initialized, shared copy-on-write. Importing torch costs a worker ~5 s on this 2-core box; a
    process's first dynamo export pays ~6 s of one-time set-up (7.5 s against 1.5 s for the second export of an
    nn.Linear), which each model would otherwise pay again. One thread, as in the workers (worker.py: OpenMP's
    pool does not survive a fork)."""
    import torch

    from .. import pipeline  # noqa: F401
    from ..export import ladder  # noqa: F401
    from ..verify import api  # noqa: F401

    if _WARM or not dynamo:
        return
    import tempfile

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="onnxgate-zoo-warm-") as tmp:
            torch.onnx.export(torch.nn.Linear(2, 2).eval(), (torch.zeros(1, 2),), f"{tmp}/warm.onnx", dynamo=True,
                              verbose=False)
    except Exception:  # a warm-up only: the models' own exports report whatever this would have met
        pass
    finally:
        torch.set_num_threads(threads)
    _WARM.append(True)


def prove_isolated(model: ZooModel, out: str, executor: str, memory_mb: float | None) -> dict[str, Any]:
    """One model in a forked worker with its timeout and memory cap -> its ledger row."""
    outcome = run_in_worker(prove, model, out, timeout_s=model.timeout_s,
                            memory_mb=model.memory_mb or memory_mb, label=f"model '{model.name}'")
    return ledger_row(model, outcome, Path(out), executor=executor)


def run_local(models: list[ZooModel], out: Path, *, jobs: int, on_row: OnRow, address: str | None = None) -> None:
    if not models:
        return
    warm_imports(dynamo_models(models) >= 2)
    available = default_memory_mb()
    share = None if available is None else available / min(jobs, len(models))  # a model without memory_mb
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="onnxgate-zoo") as pool:
        futures = [pool.submit(prove_isolated, m, str(out), "local", share) for m in models]
        try:
            for future in as_completed(futures):
                on_row(future.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # running workers get the same Ctrl-C; queued never start
            raise


def _ray_task(model: ZooModel, out: str, warm_dynamo: bool) -> dict[str, Any]:
    warm_imports(warm_dynamo)  # once per Ray worker process (they are reused for the next models)
    return prove_isolated(model, out, "ray", default_memory_mb())


def run_ray(models: list[ZooModel], out: Path, *, jobs: int, on_row: OnRow, address: str | None = None) -> None:
    """Each model a Ray task; a local cluster of ``jobs`` CPUs unless ``address`` names one (or one is already
    initialized in this process, which is then used and left running)."""
    from ..errors import require

    ray = require("ray", "ray", "The Ray executor (--executor ray)")
    if not models:
        return
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
    try:
        _stream(ray, models, out, on_row, jobs)
    finally:
        if started:
            ray.shutdown()


def _stream(ray, models: list[ZooModel], out: Path, on_row: OnRow, jobs: int) -> None:
    task = ray.remote(max_retries=0)(_ray_task)  # a crash is the model's outcome, never silently retried
    refs, warm = {}, dynamo_models(models) >= 2 * jobs  # about two dynamo exports per Ray worker, or no warm-up
    largest = _largest_node(ray)
    for m in models:
        options: dict[str, Any] = {"num_cpus": min(m.cpus, largest.get("CPU") or m.cpus),
                                   "name": f"onnxgate-zoo:{m.name}"}
        if m.memory_mb:
            options["memory"] = int(min(m.memory_mb * 2**20, largest.get("memory") or m.memory_mb * 2**20))
        refs[task.options(**options).remote(m, str(out), warm)] = m
    waiting = list(refs)
    try:
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                on_row(_row_of(ray, ref, refs[ref], out))
    except BaseException:
        for ref in waiting:
            ray.cancel(ref, force=True)
        raise


def _largest_node(ray) -> dict[str, float]:
    """The most CPUs and memory one live node offers: a task declaring more would wait forever (Ray calls it
    infeasible), so a declaration is capped there; the worker's own memory cap still holds the model to memory_mb."""
    largest: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for key in ("CPU", "memory"):
                largest[key] = max(largest.get(key, 0.0), float(node.get("Resources", {}).get(key, 0.0)))
    return largest


def _row_of(ray, ref, model: ZooModel, out: Path) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # the Ray worker itself died (OOM killer, a lost node)
        text = str(exc).strip().splitlines()
        outcome = WorkerOutcome(CRASHED, error=f"the Ray task of model '{model.name}' failed: "
                                + (text[0][:400] if text else type(exc).__name__))
        return ledger_row(model, outcome, out, executor="ray")


EXECUTORS: dict[str, Callable[..., None]] = {"local": run_local, "ray": run_ray}
