"""Evaluation on two gloo processes scores every image once and gives exactly the single-process rows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch

from drsf_kit.train.dist_eval import shard_batches

WORKER = textwrap.dedent('''
    import json, sys
    import torch
    from drsf_kit.config import load_config
    from drsf_kit.train.distributed import cleanup, init_distributed
    from drsf_kit.train.engine import build_model_for
    from drsf_kit.train.evaluate import evaluate_model

    def score(root):
        out = {}
        for task in ("det", "seg"):
            cfg = load_config(None, [f"task={task}", "variant=source_only", f"data.root={root}", "device=cpu",
                                     "eval.batch_size=2", "eval.max_images=5", "eval.domains=[daytime_clear,dusk_rainy]"])
            torch.manual_seed(0)
            model = build_model_for(cfg).eval()
            out[task] = evaluate_model(model, cfg, device=torch.device("cpu"), step=0, progress=False)
        return out

    if __name__ == "__main__":
        torch.set_num_threads(1)
        ctx = init_distributed(device="cpu")
        result = score(sys.argv[1])
        if ctx.is_main:
            json.dump(result, open(sys.argv[2], "w"))
        else:
            assert all(r == ([], {}) for r in result.values())  # rank 0 alone holds the gathered rows
        cleanup(ctx)
''')


def test_shard_batches_deal_the_single_process_batches_round_robin():
    alone = shard_batches(7, 2, rank=0, world=1)
    assert alone == [[0, 1], [2, 3], [4, 5], [6]]
    shards = [shard_batches(7, 2, rank=r, world=3) for r in range(3)]
    assert shards == [[[0, 1], [6]], [[2, 3]], [[4, 5]]]
    assert sorted(b for s in shards for b in s) == alone  # every batch once, made up as alone
    assert shard_batches(1, 4, rank=1, world=2) == []  # a process may get nothing


def test_two_processes_evaluate_exactly_like_one(tiny_weather, tmp_path):
    from test_distributed import free_port, launch_env

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "two.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           str(script), str(tiny_weather), str(out)]
    proc = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    two = json.loads(out.read_text())

    sys.path.insert(0, str(tmp_path))
    try:
        import worker
    finally:
        sys.path.remove(str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the workers
    try:
        one = json.loads(json.dumps(worker.score(str(tiny_weather))))
    finally:
        torch.set_num_threads(threads)
    for task in ("det", "seg"):
        rows, summary = one[task]
        assert rows and set(summary) == {"daytime_clear", "dusk_rainy"}
        # every row, bit for bit: 5 images in batches of 2, rank 0 scored batches 0 and 2, rank 1 batch 1
        assert two[task] == one[task], task
