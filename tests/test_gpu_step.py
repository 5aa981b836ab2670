"""benchmarks/gpu_step.py runs end to end on the CPU at its toy size and writes its JSON record."""

from __future__ import annotations

import json


def test_gpu_step_toy_run_writes_one_row_per_config_and_variant(tmp_path, load_benchmark):
    gpu_step = load_benchmark("gpu_step")
    out = tmp_path / "gpu_step.json"
    gpu_step.main(["--toy", "--device", "cpu", "--variants", "source_only", "drsf", "--steps", "1", "--warmup", "0",
                   "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["toy"] is True and record["device"].startswith("cpu")
    rows = {(r["config"], r["variant"]): r for r in record["results"]}
    assert set(rows) == {(c, v) for c in gpu_step.CONFIGS for v in ("source_only", "drsf")}
    for (config, variant), row in rows.items():
        assert row["s_per_iter"] > 0 and row["peak_gb"] is None and row["amp_dtype"] == "fp32"
        # the paper's batch: det 1 source, seg 2 sources; drsf adds one twin per source
        sources = 1 if "_det_" in config else 2
        assert row["batch_source"] == sources and row["images_per_step"] == sources * (2 if variant == "drsf" else 1)
