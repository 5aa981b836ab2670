"""The paper-scale training path on CPU: fp32 box coding under autocast, the amp dtype rule, gradient
accumulation, pinned batches, and the segmentation recipe at one image per step."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder

from drsf_kit.config import load_config
from drsf_kit.models.box_coding import FP32AnchorGenerator, FP32BoxCoder
from drsf_kit.train.accumulation import split_batch
from drsf_kit.data.twins import TwinBatch
from drsf_kit.train.engine import train_step
from drsf_kit.train.precision import resolve_amp_dtype


# ------------------------------------------------------------------------------------------- precision
def _codes_and_anchors(n: int = 400):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(n, generator=g) * 1100  # anchors over a 1280x720 image, most of them right of x = 512
    y0 = torch.rand(n, generator=g) * 600
    anchors = torch.stack([x0, y0, x0 + 40 + 140 * torch.rand(n, generator=g), y0 + 30 + 80 * torch.rand(n, generator=g)], 1)
    head = nn.Linear(16, 4)
    feats = torch.randn(n, 16, generator=g)
    return head, feats, anchors


def test_box_decoding_under_bf16_autocast_matches_fp32_within_a_pixel():
    head, feats, anchors = _codes_and_anchors()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = head(feats)  # the regression head's output comes out in bf16, as on a GPU
        assert codes.dtype == torch.bfloat16
        ours = FP32BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(codes, [anchors]).reshape(-1, 4)
        stock = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(codes, [anchors]).reshape(-1, 4)
    # the same network output decoded in fp32 outside autocast: decoding itself must add no error
    reference = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(codes.detach().float(), [anchors]).reshape(-1, 4)
    assert ours.dtype == torch.float32
    ours_err = (ours - reference).abs().max().item()
    stock_err = (stock.float() - reference).abs().max().item()
    assert ours_err < 1.0, ours_err
    assert stock_err > 1.0, stock_err  # torchvision's decode in bf16 moves boxes by pixels at x ~ 1000


def test_anchors_and_detector_box_coding_stay_fp32_under_autocast():
    from torchvision.models.detection.image_list import ImageList

    from drsf_kit.models import build_model

    gen = FP32AnchorGenerator(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2)
    images = ImageList(torch.zeros(1, 3, 720, 1280), [(720, 1280)])
    maps = [torch.zeros(1, 8, 90, 160, dtype=torch.bfloat16), torch.zeros(1, 8, 45, 80, dtype=torch.bfloat16)]
    fp32_maps = [m.float() for m in maps]
    anchors = gen(images, maps)[0]
    assert anchors.dtype == torch.float32 and torch.equal(anchors, gen(images, fp32_maps)[0])
    model = build_model("det", "mini", "source_only", num_domains=1)
    assert isinstance(model.rpn.box_coder, FP32BoxCoder) and isinstance(model.roi_heads.box_coder, FP32BoxCoder)
    assert model.roi_heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)


def test_amp_dtype_follows_the_device():
    cpu = torch.device("cpu")
    for name in ("auto", "bf16", "fp16"):
        assert resolve_amp_dtype(True, name, cpu) is None  # the CPU trains in fp32 whatever the config
    assert resolve_amp_dtype(False, "fp16", torch.device("cuda")) is None
    assert load_config("configs/paper_det_dwd_r101.yaml").train.amp_dtype == "auto"
    assert load_config("configs/paper_seg_gtav_r101.yaml").train.amp_dtype == "auto"
    if torch.cuda.is_available():
        major = torch.cuda.get_device_capability()[0]
        want = torch.bfloat16 if major >= 8 else torch.float16
        assert resolve_amp_dtype(True, "auto", torch.device("cuda")) == want


# ------------------------------------------------------------------------------------------- accumulation
class PerImageModel(nn.Module):
    """A tiny segmenter-shaped model whose loss is a mean over images (no BatchNorm), for exact checks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, images, targets, domains=None, pairs=None, progress=0.0, generator=None):
        out = self.conv(images)
        per_image = ((out - targets[:, None].float()) ** 2).mean(dim=(1, 2, 3))
        twin_gap = (out[pairs[:, 0]] - out[pairs[:, 1]]).pow(2).mean() if len(pairs) else out.sum() * 0
        return {"loss_task": per_image.mean(), "loss_pair": 0.1 * twin_gap}


def _twin_batch(sources: int = 4, twinned=(0, 1, 3)) -> TwinBatch:
    g = torch.Generator().manual_seed(1)
    n = sources + len(twinned)
    images = torch.rand(n, 3, 8, 8, generator=g)
    targets = torch.randint(0, 3, (n, 8, 8), generator=g)
    domains = torch.tensor([0] * sources + [1 + i % 2 for i in range(len(twinned))])
    pairs = torch.tensor([[s, sources + p] for p, s in enumerate(twinned)])
    return TwinBatch(images, targets, domains, pairs, [f"s{i}" for i in range(sources)])


def test_split_batch_keeps_each_twin_with_its_source():
    batch = _twin_batch()
    a, b = split_batch(batch, 2)
    assert a.domains.tolist() == [0, 0, 1, 2] and a.pairs.tolist() == [[0, 2], [1, 3]]
    assert b.domains.tolist() == [0, 0, 1] and b.pairs.tolist() == [[1, 2]]
    assert torch.equal(b.images[2], batch.images[6]) and torch.equal(b.images[1], batch.images[3])
    assert a.source_ids == ["s0", "s1"] and b.source_ids == ["s2", "s3"]


def _grads(accumulate: int, batch: TwinBatch):
    model = PerImageModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the gradients to compare
    result = train_step(model, batch, opt, torch.device("cpu"), step=1, progress=0.0, accumulate=accumulate)
    return [p.grad.clone() for p in model.parameters()], result


def test_accumulating_two_halves_equals_one_step_of_the_whole_batch():
    batch = _twin_batch(sources=4, twinned=(0, 1, 2, 3))  # equal halves: the per-piece means average exactly
    whole, r1 = _grads(1, batch)
    halves, r2 = _grads(2, batch)
    for g1, g2 in zip(whole, halves):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)
    assert abs(r1.loss - r2.loss) < 1e-5 and r2.images == len(batch) == 8 and r2.gpu_mem_gb is None


def test_pin_memory_pins_every_tensor(monkeypatch):
    from torch.utils.data._utils.pin_memory import pin_memory

    batch = _twin_batch()
    det = TwinBatch([torch.rand(3, 4, 4)], [{"boxes": torch.zeros(1, 4), "labels": torch.ones(1)}],
                    torch.zeros(1, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long), ["a"])
    if not torch.cuda.is_available():  # a CPU-only torch cannot pin: record what the loader asks for
        pinned = []

        def fake_pin(self, *args, **kwargs):
            out = self.clone()
            pinned.append(out)
            return out

        monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
        monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a, **k: any(self is p for p in pinned))
    for b in (batch, det):
        out = pin_memory(b)  # what DataLoader(pin_memory=True)'s pinning thread calls on each batch
        assert isinstance(out, TwinBatch) and out.source_ids == b.source_ids
        tensors = ([out.images, out.targets] if isinstance(out.images, torch.Tensor)
                   else out.images + [v for t in out.targets for v in t.values()])
        assert all(t.is_pinned() for t in tensors + [out.domains, out.pairs])


# ------------------------------------------------------------------------------------------- seg recipe
def test_deeplab_head_trains_at_one_image_per_step():
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    from drsf_kit.models.segmenter import TorchvisionDeepLabHead

    x = torch.rand(1, 64, 5, 6)
    stock = DeepLabHead(64, 19).train()
    try:
        stock(x)
    except ValueError as exc:  # torchvision's pooling-branch BatchNorm: the failure the recipe had at B=1
        assert "more than 1 value per channel" in str(exc)
    else:  # pragma: no cover - would mean torchvision changed its ASPP
        raise AssertionError("torchvision's DeepLabHead no longer fails at batch 1")
    head = TorchvisionDeepLabHead(64, 19).train()
    out = head({"out": x})
    out.sum().backward()
    assert out.shape == (1, 19, 5, 6) and all(p.grad is not None for p in head.parameters())


@pytest.mark.slow  # a ResNet-101 on two shared CPU cores takes about a minute
def test_paper_seg_recipe_trains_source_only_at_one_image_per_step():
    from drsf_kit.train.engine import build_model_for, build_optimizer
    from drsf_kit.train.memory import estimate_memory

    cfg = load_config("configs/paper_seg_gtav_r101.yaml", [
        "variant=source_only", "model.pretrained_backbone=null", "train.batch_source=1", "train.crop_size=[48,64]"])
    assert cfg.model.profile == "deeplabv3_r101" and cfg.train.batch_source == 1
    torch.manual_seed(0)
    model = build_model_for(cfg, load_pretrained=False)
    opt = build_optimizer(model, cfg.train)
    g = torch.Generator().manual_seed(0)
    batch = TwinBatch(torch.rand(1, 3, 48, 64, generator=g), torch.randint(0, 19, (1, 48, 64), generator=g),
                      torch.zeros(1, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long), ["a"])
    before = model.head.head[4].weight.detach().clone()
    for step in (1, 2):  # torchvision's ASPP pooling BatchNorm raised here at one image per step
        result = train_step(model, batch, opt, torch.device("cpu"), step=step, progress=0.0, amp=cfg.train.amp,
                            amp_dtype=cfg.train.amp_dtype, accumulate=cfg.train.accumulate)
        assert result.loss == result.loss and result.loss > 0
    assert not torch.equal(before, model.head.head[4].weight)
    est = estimate_memory(model, cfg, torch.device("cpu"), None)
    # one 48x64 image per forward; ResNet-101 weights + grads + momentum are about 0.6 GiB in fp32
    assert est["images_per_forward"] == 1 and est["image_hw"] == [48, 64] and est["activations_gib"] > 0
    assert 0.4 < est["weights_gib"] + est["grads_gib"] + est["optimizer_gib"] < 1.0


def test_fit_logs_speed_and_the_memory_estimate(tiny_weather, tmp_path):
    import json

    from drsf_kit.train.engine import fit

    cfg = load_config("configs/mini_seg.yaml", [
        "variant=source_only", f"data.root={tiny_weather}", "train.batch_source=2", "train.accumulate=2",
        "train.max_steps=2", "train.log_every=1", "train.tensorboard=false", "eval.domains=[daytime_clear]",
        "eval.max_images=1", "device=cpu", f"output_dir={tmp_path}"])
    rows = [json.loads(line) for line in (fit(cfg, progress=False) / "metrics.jsonl").read_text().splitlines()]
    estimate = rows[0]["memory_estimate"]
    assert rows[0]["event"] == "start"
    assert estimate["images_per_forward"] == 1 and estimate["image_hw"] == [180, 320] and estimate["activations_gib"] > 0
    steps = [r for r in rows if "images_per_s" in r]
    assert len(steps) == 2 and all(r["images_per_s"] > 0 and r["gpu_mem_gb"] is None for r in steps)


def test_throughput_switches_leave_a_cpu_run_alone():
    from drsf_kit.config import TrainConfig
    from drsf_kit.train.throughput import maybe_compile, prepare_model

    tcfg = TrainConfig(channels_last=True, compile=True)
    model = nn.Conv2d(3, 4, 3)
    assert prepare_model(model, tcfg, torch.device("cpu")) is model and model.weight.is_contiguous()
    assert maybe_compile(model, tcfg, torch.device("cpu")) is model
    if torch.cuda.is_available():
        cuda_model = prepare_model(nn.Conv2d(3, 4, 3).cuda(), tcfg, torch.device("cuda"))
        assert cuda_model.weight.is_contiguous(memory_format=torch.channels_last)
