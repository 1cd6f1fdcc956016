"""Where shards are labeled: in this process, or as dask tasks (one task = one shard).

Both executors offer the same two calls, so `run_labeling` does not care which
one it has: `labeler_info` (build the labeler once, report its grid and CLIP
identity) and `run` (yield each shard's outcome as it finishes, in any order).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Iterator

from clasp.labeling.errors import LabelingError, LabelingRunError
from clasp.hardware import available_cores, torch_threads
from clasp.labeling.config import ClipLabelerConfig
from clasp.labeling.shard_worker import (
    LabelerFactory, LabelerInfo, ShardJob, ShardOutcome, label_shard, labeler_info,
)

PROGRESS_TOPIC = "clasp-label-progress"
Progress = Callable[[int], None]


class InProcessExecutor:
    """No cluster: shards run one after another here, torch uses every available core. Best for one GPU and small jobs."""

    def __init__(self, factory: LabelerFactory) -> None:
        self.factory = factory

    def labeler_info(self, spec: ClipLabelerConfig) -> LabelerInfo:
        return labeler_info(self.factory, spec)

    def run(self, jobs: list[ShardJob], progress: Progress) -> Iterator[ShardOutcome]:
        for job in jobs:
            yield label_shard(job, on_batch=progress)


class DaskExecutor:
    """Shards as dask tasks on a local cluster (`workers`) or an existing one (`scheduler`).

    Each worker process builds the labeler once and keeps it; torch gets an equal
    share of its host's cores. Workers report progress per batch through a dask
    event topic, so the bar moves between finished shards.
    """

    def __init__(self, factory: LabelerFactory, client) -> None:
        self.factory = factory
        self.client = client
        hosts = client.run(_host_and_cores)  # worker address -> (host, cores)
        share_cores(client, hosts)
        spread_over_gpus(client, hosts)

    def labeler_info(self, spec: ClipLabelerConfig) -> LabelerInfo:
        future = self.client.submit(labeler_info_on_worker, self.factory, spec, pure=False,
                                    key=f"clasp-labeler-info-{os.getpid()}")
        return future.result()

    def run(self, jobs: list[ShardJob], progress: Progress) -> Iterator[ShardOutcome]:
        from distributed import as_completed

        self.client.subscribe_topic(PROGRESS_TOPIC, lambda event: progress(int(event[1])))
        futures = [self.client.submit(label_shard_on_worker, job, pure=False, key=f"clasp-{job.plan.file}-{os.getpid()}")
                   for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(PROGRESS_TOPIC)


def labeler_info_on_worker(factory: LabelerFactory, spec: ClipLabelerConfig) -> LabelerInfo:
    with _plain_user_errors():
        return labeler_info(factory, spec)


def label_shard_on_worker(job: ShardJob) -> ShardOutcome:
    from distributed import get_worker

    worker = get_worker()
    with _plain_user_errors():
        return label_shard(job, on_batch=lambda n: worker.log_event(PROGRESS_TOPIC, n))


@contextlib.contextmanager
def _plain_user_errors():
    """Re-raise user errors as a plain `LabelingError`, which survives the trip back to the client.

    Subclasses with extra constructor arguments (`ClipLoadError`) cannot be
    unpickled from their message alone, and the user would see a dask error
    instead of ours.
    """
    try:
        yield
    except LabelingError as exc:
        raise LabelingError(str(exc)) from None
    except LabelingRunError as exc:
        raise LabelingRunError(str(exc)) from None


def share_cores(client, hosts: dict[str, tuple[str, int]]) -> dict[str, int]:
    """Give each worker process torch threads = its host's cores / worker processes on that host.

    Dask starts workers with OMP_NUM_THREADS=1; without this, every worker would
    run the model on a single core.
    """
    per_host: dict[str, int] = {}
    for host, _ in hosts.values():
        per_host[host] = per_host.get(host, 0) + 1
    threads = {addr: max(1, cores // per_host[host]) for addr, (host, cores) in hosts.items()}
    client.run(_set_torch_threads, threads)
    return threads


def local_ranks(hosts: dict[str, str]) -> dict[str, int]:
    """Each worker's index among the workers of its host (by address), e.g. for picking its GPU."""
    ranks: dict[str, int] = {}
    for host in sorted(set(hosts.values())):
        for rank, addr in enumerate(sorted(a for a, h in hosts.items() if h == host)):
            ranks[addr] = rank
    return ranks


def spread_over_gpus(client, hosts: dict[str, tuple[str, int]]) -> None:
    """One GPU per worker: worker k of a host makes `cuda:(k mod GPUs)` its current device.

    With `--device cuda` every worker then loads CLIP on its own GPU instead of
    all of them on GPU 0. An explicit `--device cuda:N` is left as given; hosts
    without CUDA are untouched.
    """
    client.run(_set_cuda_device, local_ranks({addr: host for addr, (host, _) in hosts.items()}))


def _set_cuda_device(ranks: dict[str, int], dask_worker=None) -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    index = ranks.get(dask_worker.address, 0) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return index


def _host_and_cores(dask_worker=None) -> tuple[str, int]:
    return dask_worker.ip, available_cores()


def _set_torch_threads(threads: dict[str, int], dask_worker=None) -> int:
    import torch

    n = threads.get(dask_worker.address, 1)
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def open_executor(workers: int, scheduler: str | None, factory: LabelerFactory) -> Iterator[InProcessExecutor | DaskExecutor]:
    """The executor for `--workers`/`--scheduler`; a local cluster lives as long as the block."""
    if not scheduler and workers == 0:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(torch_threads())  # not the machine's count: affinity and cgroup quota
        try:
            yield InProcessExecutor(factory)
        finally:
            torch.set_num_threads(before)
        return
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield DaskExecutor(factory, client)
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=0, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield DaskExecutor(factory, client)
