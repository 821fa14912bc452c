"""The score stage: compute plans, order and error items through the DataLoader, bf16 vs fp32."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from scan_fixtures import jpeg_bytes, noise_image

from audit.engines import Scorer, collate_results, score_records
from audit.intake import LoadOptions, discover, load_image
from audit.model import (
    ComputeError,
    ComputePlan,
    ModelCard,
    build_network,
    cpu_has_native_bf16,
    default_workers,
    load_model,
    normalize,
    plan_compute,
    save_model,
)

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifake-sample"
CPU = torch.device("cpu")


def test_auto_plan_on_cpu_is_fp32_channels_last_unless_the_card_says_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = plan_compute("auto", "auto")
    assert plan == ComputePlan(CPU, None, channels_last=True, pin_memory=False)
    monkeypatch.setattr("audit.model._compute.cpu_has_native_bf16", lambda: True)
    assert plan_compute("auto", "auto", card_compute_dtype="bfloat16").autocast_dtype == torch.bfloat16
    monkeypatch.setattr("audit.model._compute.cpu_has_native_bf16", lambda: False)
    assert plan_compute("auto", "auto", card_compute_dtype="bfloat16").autocast_dtype is None
    assert plan_compute("cpu", "bf16").autocast_dtype == torch.bfloat16


def test_cuda_plan_pins_memory_and_uses_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = plan_compute("auto", "auto")
    assert (plan.device.type, plan.autocast_dtype, plan.pin_memory) == ("cuda", torch.float16, True)
    assert plan_compute("cpu", "auto").device == CPU


def test_cuda_without_a_gpu_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ComputeError, match="no CUDA GPU is available"):
        plan_compute("cuda")


def test_native_bf16_is_read_from_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(str(cpuinfo))
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert not cpu_has_native_bf16(str(cpuinfo))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))


def test_default_workers_leave_room_for_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)))
    assert default_workers(CPU) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert default_workers(CPU) == 4 and default_workers(torch.device("cuda")) == 8


def make_records(tmp_path: Path, n: int, bad_every: int = 3) -> list:
    for i in range(n):
        data = b"not an image" if i % bad_every == 0 else jpeg_bytes(noise_image(20 + i, 16, seed=i))
        (tmp_path / f"{i:03d}.jpg").write_bytes(data)
    return list(discover([tmp_path]))


def test_collate_keeps_error_items_as_data(tmp_path: Path) -> None:
    records = make_records(tmp_path, 5)
    batch = collate_results([load_image(r, LoadOptions()) for r in records])
    assert [r.ok for r in batch.results] == [False, True, True, False, True]
    assert batch.ok_positions == [1, 2, 4] and tuple(batch.images.shape) == (3, 3, 32, 32)
    assert all(r.tensor is None for r in batch.results)  # one copy of the pixels, in images


@pytest.mark.parametrize("workers", [0, 2])
def test_scores_stream_in_discovery_order_with_errors_in_place(tmp_path: Path, model_path: Path, workers: int) -> None:
    records = make_records(tmp_path, 11)
    scorer = Scorer(load_model(model_path), plan_compute("cpu", "fp32"))
    scored = list(score_records(records, scorer, LoadOptions(), batch_size=4, workers=workers))
    assert [s.result.record.rel_path for s in scored] == [r.rel_path for r in records]
    assert [s.prob_ai is None for s in scored] == [i % 3 == 0 for i in range(11)]
    # The same image gets the same probability alone as in a batch.
    alone = scorer.probabilities(load_image(records[1], LoadOptions()).tensor[None])
    assert scored[1].prob_ai == pytest.approx(alone.item(), abs=1e-5)


@pytest.mark.slow
def test_a_decoder_crash_in_a_worker_is_one_error_row_and_the_run_goes_on(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segfault in native decoding code kills a worker process; only that file is lost."""
    records = make_records(tmp_path, 12)
    crasher = records[7].rel_path

    def load_or_segfault(record, options):
        if record.rel_path == crasher:
            os.kill(os.getpid(), signal.SIGSEGV)  # the forked worker dies as a codec fault would
        return load_image(record, options)

    monkeypatch.setattr("audit.engines._local.load_image", load_or_segfault)  # workers are forked: they see it
    scorer = Scorer(load_model(model_path), plan_compute("cpu", "fp32"))
    scored = list(score_records(records, scorer, LoadOptions(), batch_size=2, workers=2))
    assert [s.result.record.rel_path for s in scored] == [r.rel_path for r in records]
    crashed = [s for s in scored if s.result.error and "decoder crashed" in s.result.error]
    assert [s.result.record.rel_path for s in crashed] == [crasher]
    others = [s for s in scored if s.result.record.rel_path != crasher]
    assert [s.prob_ai is None for s in others] == [i % 3 == 0 for i in range(12) if i != 7]


def test_scorer_applies_normalisation_and_temperature(tmp_path: Path) -> None:
    torch.manual_seed(1)
    network = build_network("resnet18-s1stem")
    save_model(network, ModelCard(name="hot", temperature=2.5), tmp_path / "hot", dtype=torch.float32)
    model = load_model(tmp_path / "hot.json")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        logits = model.network(normalize(images, model.card.preprocessing))
    expected = torch.softmax(logits / 2.5, dim=1)[:, 1]
    got = Scorer(model, plan_compute("cpu", "fp32")).probabilities(images)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.fixture(scope="module")
def sample_images() -> torch.Tensor:
    return torch.stack([load_image(r, LoadOptions()).tensor for r in discover([SAMPLE])])


@pytest.fixture(scope="module")
def realistic_model(tmp_path_factory: pytest.TempPathFactory, sample_images: torch.Tensor):
    return model_with_realistic_outputs(tmp_path_factory.mktemp("realistic"), sample_images)


def model_with_realistic_outputs(tmp_path: Path, images: torch.Tensor):
    """A random network whose batch-norm statistics come from real images and whose logits are
    spread like a trained model's (probabilities from ~0 to ~1), so rounding errors show."""
    torch.manual_seed(0)
    network = build_network("resnet18-s1stem")
    card = ModelCard(name="calibrated-random")
    inputs = normalize(images, card.preprocessing)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batch
    with torch.no_grad():
        network.train()(inputs)
        logits = network.eval()(inputs)
        network.fc.weight.mul_(3.0 / logits.std())
    save_model(network, card, tmp_path / "m", dtype=torch.float32)
    return load_model(tmp_path / "m.json")


# Measured on the 200 sample images with model_with_realistic_outputs: max |p_bf16 - p_fp32|
# 0.108, mean 0.014 (3 of 200 verdicts at 0.5 flipped). Stated tolerance for --precision bf16:
BF16_MAX_ABS_TOLERANCE = 0.15
BF16_MEAN_ABS_TOLERANCE = 0.03


@pytest.mark.slow
def test_bf16_probabilities_match_fp32_within_the_stated_tolerance(realistic_model, sample_images) -> None:
    model, images = realistic_model, sample_images
    fp32 = Scorer(model, plan_compute("cpu", "fp32")).probabilities(images)
    bf16 = Scorer(model, plan_compute("cpu", "bf16")).probabilities(images)
    assert fp32.std() > 0.2  # the outputs are spread, so the comparison means something
    difference = (bf16 - fp32).abs()
    assert difference.max() <= BF16_MAX_ABS_TOLERANCE and difference.mean() <= BF16_MEAN_ABS_TOLERANCE


@pytest.mark.slow
def test_channels_last_fp32_matches_the_plain_network(realistic_model, sample_images) -> None:
    model, images = realistic_model, sample_images[:32]
    with torch.no_grad():
        plain = model.probabilities(model.network(normalize(images, model.card.preprocessing)))
    channels_last = Scorer(model, plan_compute("cpu", "fp32")).probabilities(images)
    assert torch.allclose(plain, channels_last, atol=1e-4)
