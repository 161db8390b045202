"""Distributed evaluation: 2 gloo processes over all 257 real validation masks pool exactly the
1-process confusion matrix (no padded duplicates, counts summed across processes)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import REAL, requires_real


def _conf_over_shard(world: int, rank: int) -> torch.Tensor:
    from vislab.data.segmentation import list_pairs, read_mask
    from vislab.engine.sampling import EpochSampler
    from vislab.engine.segmentation import PooledConfusion

    pairs = list_pairs(REAL / "p2_data" / "validation")
    metric = PooledConfusion()
    for i in EpochSampler(len(pairs), shuffle=False, seed=0):  # this rank's share: i = rank, rank+world, ...
        truth, _ = read_mask(pairs[i].mask)
        guess = torch.roll(truth, 5, dims=1)  # a deterministic imperfect "prediction"
        metric.update(guess, truth)
    return metric.compute()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        conf = _conf_over_shard(world, rank)
        if rank == 0:
            torch.save(conf, out)
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


@requires_real
def test_two_process_confusion_equals_one_process_realdata(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "conf.pt")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    single = _conf_over_shard(1, 0)
    assert single.sum() == 257 * 512 * 512
    assert torch.equal(torch.load(out, weights_only=True), single)
