"""BN calibration is exact (every activation weighs the same), touches only BN, and is deterministic."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from mmdeploy.bundle import Bundle
from mmdeploy.calib import bn_layers, calibrate_bn, finalize_bn_state, plan_batches
from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.data import Preprocess
from mmdeploy.errors import MMDeployError
from mmdeploy.models import create_model
from tests.conftest import randomize_bn

CIFAR = Preprocess("cifar", (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def _images(n: int, side: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _batches(n: int, batch_size: int, seed: int = 0) -> list[tuple[int, torch.Tensor]]:
    return [(i, torch.tensor(b)) for i, b in enumerate(plan_batches(n, batch_size, batches=1000, seed=seed))]


def _capture_bn_inputs(model: nn.Module) -> tuple[dict, list]:
    """Record each BN layer's input per input size, from pre-hooks on the model being calibrated."""
    seen: dict[int, dict[str, list[torch.Tensor]]] = {}
    current = {}

    def on_model(module, inputs):
        current["size"] = inputs[0].shape[-1]

    def on_bn(name):
        def hook(module, inputs):
            seen.setdefault(current["size"], {}).setdefault(name, []).append(inputs[0].detach().to("cpu", torch.float64))

        return hook

    handles = [model.register_forward_pre_hook(on_model)]
    handles += [m.register_forward_pre_hook(on_bn(name)) for name, m in bn_layers(model)]
    return seen, handles


def _direct_stats(inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance per channel over every activation of every batch."""
    x = torch.cat([t.transpose(0, 1).reshape(t.shape[1], -1) for t in inputs], dim=1)
    return x.mean(1), x.var(1, unbiased=True)


class _RunsOutOfOrder(nn.Module):
    """BN layers whose forward order differs from their registration order, at different spatial sizes."""

    def __init__(self):
        super().__init__()
        self.bn_late = nn.BatchNorm2d(4)
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_early = nn.BatchNorm2d(4)

    def forward(self, x):
        full = self.bn_early(self.conv(x))
        half = self.bn_late(self.down(x))
        return full.mean((2, 3)) + half.mean((2, 3))


MODELS = {"cifar_resnet8": lambda: randomize_bn(create_model("cifar_resnet8")), "out_of_order": _RunsOutOfOrder}


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("n_images, batch_size", [(10, 4), (12, 4), (9, 5)])
def test_statistics_equal_direct_computation_over_all_activations(arch, n_images, batch_size, device="cpu"):
    torch.manual_seed(0)
    model = MODELS[arch]().eval().to(device)
    images = _images(n_images)
    batches = _batches(n_images, batch_size)
    sizes = [16, 24]
    if (n_images, batch_size) == (10, 4):
        assert [len(b) for _, b in batches] == [4, 4, 2]  # an uneven last batch
    seen, handles = _capture_bn_inputs(model)
    try:
        sums = calibrate_bn(model, images, batches, sizes, CIFAR, augment=True, seed=3, device=device)
    finally:
        for h in handles:
            h.remove()
    model.cpu()
    for size in sizes:
        state = finalize_bn_state(model, sums[size], len(batches))
        for name, _ in bn_layers(model):
            assert len(seen[size][name]) == len(batches)
            mean, var = _direct_stats(seen[size][name])
            torch.testing.assert_close(state[f"{name}.running_mean"].double(), mean, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(state[f"{name}.running_var"].double(), var, rtol=1e-5, atol=1e-5)
            assert state[f"{name}.num_batches_tracked"].item() == len(batches)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_statistics_are_exact_on_cuda_and_match_the_cpu():
    test_statistics_equal_direct_computation_over_all_activations("cifar_resnet8", 10, 4, device="cuda")
    model = randomize_bn(create_model("cifar_resnet8")).eval()
    images, batches = _images(12), _batches(12, 4)
    on_cpu = calibrate_bn(model, images, batches, [16, 24], CIFAR, augment=True, seed=1)
    on_gpu = calibrate_bn(model.cuda(), images, batches, [16, 24], CIFAR, augment=True, seed=1, device="cuda")
    for size in (16, 24):
        for name, s in on_cpu[size].items():
            assert on_gpu[size][name].count == s.count and on_gpu[size][name].sum.device.type == "cpu"
            for a, b in zip(s.mean_var(), on_gpu[size][name].mean_var()):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


class _SharedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(self.bn(x)))


def test_a_batchnorm_used_twice_is_refused():
    from mmdeploy.errors import MMDeployError

    with pytest.raises(MMDeployError, match="'bn' runs more than once"):
        calibrate_bn(_SharedBN(), _images(4, side=8), _batches(4, 2), [8], CIFAR)


def test_an_unused_batchnorm_is_refused():
    from mmdeploy.errors import MMDeployError

    model = _TinyWithDropout()
    model.spare = nn.BatchNorm2d(2)
    model.eval()
    with pytest.raises(MMDeployError, match="'spare' does not run"):
        calibrate_bn(model, _images(4, side=8), _batches(4, 2), [8], CIFAR)
    assert not model.training and model.spare.momentum == 0.1


def test_uneven_last_batch_is_not_overweighted():
    """momentum=None (a mean of batch means) gets this wrong; the exact sums do not."""
    model = randomize_bn(create_model("cifar_resnet8")).eval()
    images = _images(10)
    batches = _batches(10, 4)
    seen, handles = _capture_bn_inputs(model)
    sums = calibrate_bn(model, images, batches, [16], CIFAR, augment=False)
    for h in handles:
        h.remove()
    inputs = seen[16]["bn1"]
    per_batch_mean = torch.stack([t.mean((0, 2, 3)) for t in inputs]).mean(0)
    exact, _ = _direct_stats(inputs)
    assert not torch.allclose(per_batch_mean, exact, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sums[16]["bn1"].mean_var()[0], exact, rtol=1e-6, atol=1e-6)


def test_plan_batches_uses_every_image_once():
    plan = plan_batches(10, 4, batches=200, seed=0)
    assert sorted(i for b in plan for i in b) == list(range(10))
    assert [len(b) for b in plan] == [4, 4, 2]
    lone = plan_batches(9, 4, batches=200, seed=0)
    assert [len(b) for b in lone] == [4, 5]  # a lone image joins the batch before
    assert sorted(i for b in lone for i in b) == list(range(9))
    assert sum(len(b) for b in plan_batches(100, 8, batches=3, seed=0)) == 24
    assert plan_batches(10, 4, 200, seed=1) != plan


def test_only_bn_statistics_change_and_model_is_restored():
    model = randomize_bn(create_model("cifar_resnet8")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches(8, 4)
    sums = calibrate_bn(model, _images(8), batches, [16], CIFAR, augment=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "calibrate_bn must leave the model as it was"
    assert not model.training and not any(m.training for m in model.modules())
    assert all(m.momentum == 0.1 for _, m in bn_layers(model))

    state = finalize_bn_state(model, sums[16], len(batches))
    stat_keys = {f"{name}.{b}" for name, _ in bn_layers(model) for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert state.keys() == before.keys()
    for key in before:
        if key in stat_keys:
            if not key.endswith("num_batches_tracked"):
                assert not torch.equal(state[key], before[key]), key
        else:
            assert torch.equal(state[key], before[key]), key


class _TinyWithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.conv2 = nn.Conv2d(6, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(self.drop(torch.relu(self.bn(self.conv(x))))))


def test_dropout_and_other_layers_stay_in_eval_mode():
    torch.manual_seed(0)
    model = _TinyWithDropout().eval()
    modes: dict[str, set] = {}
    for name, m in model.named_modules():
        m.register_forward_hook(lambda mod, i, o, name=name: modes.setdefault(name, set()).add(mod.training))
    images, batches = _images(8, side=8), _batches(8, 4)
    first = calibrate_bn(model, images, batches, [8], CIFAR, augment=False)
    second = calibrate_bn(model, images, batches, [8], CIFAR, augment=False)
    assert modes["drop"] == {False} and modes["conv"] == {False} and modes["conv2"] == {False} and modes[""] == {False}
    assert modes["bn"] == {True} and modes["bn2"] == {True}
    # dropout active would make bn2's input, hence its statistics, random
    for name in ("bn", "bn2"):
        assert torch.equal(first[8][name].sum, second[8][name].sum) and torch.equal(first[8][name].sumsq, second[8][name].sumsq)


def test_one_size_does_not_depend_on_the_other_sizes():
    model = randomize_bn(create_model("cifar_resnet8")).eval()
    images, batches = _images(12), _batches(12, 4)
    alone = calibrate_bn(model, images, batches, [24], CIFAR, augment=True, seed=5)
    together = calibrate_bn(model, images, batches, [16, 24, 48], CIFAR, augment=True, seed=5)
    for name in alone[24]:
        assert torch.equal(alone[24][name].sum, together[24][name].sum)
        assert torch.equal(alone[24][name].sumsq, together[24][name].sumsq)


def test_model_without_batchnorm_warns_and_changes_nothing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.warns(UserWarning, match="no BatchNorm"):
        sums = calibrate_bn(model, _images(4), _batches(4, 2), [16], CIFAR)
    assert sums == {16: {}}


# -- through the bundle workflow -------------------------------------------------------------


def _calibrate(image_dir, checkpoint, out, seed=0, sizes=(16,)):
    return calibrate_to_bundle(checkpoint, list(sizes), image_dir, out, batches=3, batch_size=4, seed=seed)


def test_same_seed_same_weights_different_seed_different(image_dir, resnet8_checkpoint, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        _calibrate(image_dir, resnet8_checkpoint, tmp_path / name, seed=seed)
    a, b, c = (load_file(str(tmp_path / n / "sizes/16/weights.safetensors")) for n in "abc")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["bn1.running_mean"], c["bn1.running_mean"])
    assert all(torch.equal(a[k], c[k]) for k in a if "running" not in k and "num_batches" not in k)


def test_bundle_size_result_does_not_depend_on_the_other_sizes(image_dir, resnet8_checkpoint, tmp_path):
    _calibrate(image_dir, resnet8_checkpoint, tmp_path / "one", sizes=(24,))
    _calibrate(image_dir, resnet8_checkpoint, tmp_path / "three", sizes=(16, 24, 48))
    one = load_file(str(tmp_path / "one/sizes/24/weights.safetensors"))
    three = load_file(str(tmp_path / "three/sizes/24/weights.safetensors"))
    assert all(torch.equal(one[k], three[k]) for k in one)


def test_bundle_records_sizes_and_reuses_unchanged_work(image_dir, resnet8_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    first = _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16, 24))
    assert first.sizes == [16, 24] and first.reused == [] and first.images == 12
    bundle = Bundle.open(out)
    assert bundle.sizes == [16, 24] and bundle.arch == "cifar_resnet8"
    record = bundle.manifest["sizes"]["16"]["calibration"]
    assert record["batches"] == 3 and record["batch_size"] == 4 and record["images"] == 12
    model16 = bundle.build_model(16)
    assert not torch.equal(model16.bn1.running_mean, bundle.build_model(None).bn1.running_mean)
    again = _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16, 32))
    assert again.reused == [16]
    assert Bundle.open(out).sizes == [16, 24, 32]


def test_imagenet_preprocessing_size_result_does_not_depend_on_the_other_sizes(image_dir, resnet8_checkpoint, tmp_path):
    for name, sizes in (("one", [24]), ("two", [24, 48])):
        calibrate_to_bundle(resnet8_checkpoint, sizes, image_dir, tmp_path / name, batches=3, batch_size=4, preprocess="imagenet")
    one = load_file(str(tmp_path / "one/sizes/24/weights.safetensors"))
    two = load_file(str(tmp_path / "two/sizes/24/weights.safetensors"))
    assert all(torch.equal(one[k], two[k]) for k in one)


# -- bundle consistency on re-calibration --------------------------------------------------------


def _fake_artifact(out, size: int) -> None:
    """Record an exported ONNX, a dynamic ONNX carrying this size's statistics, and metrics, as export/eval would."""
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    (out / f"sizes/{size}/model.onnx").write_bytes(b"onnx")
    (out / "model.dynamic.onnx").write_bytes(b"onnx")
    manifest["sizes"][str(size)]["artifacts"]["onnx/fp32"] = {"path": f"sizes/{size}/model.onnx", "key": "k"}
    manifest["sizes"][str(size)]["metrics"]["accuracy"] = {"ort/fp32": {"top1": 1.0, "top5": 2.0, "images": 8}}
    manifest["dynamic"]["onnx/fp32"] = {"path": "model.dynamic.onnx", "bn_statistics": f"calibrated for {size}"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "report.json").write_text("{}")


def test_recalibrating_a_size_removes_its_stale_artifacts_and_metrics(image_dir, resnet8_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16, 24))
    _fake_artifact(out, 16)
    _calibrate(image_dir, resnet8_checkpoint, out, seed=1, sizes=(16,))  # new statistics for 16
    entry = Bundle.open(out).manifest["sizes"]["16"]
    assert entry["artifacts"] == {} and entry["metrics"] == {}
    assert Bundle.open(out).manifest["dynamic"] == {}, "the dynamic ONNX carried 16's old statistics"
    assert not (out / "sizes/16/model.onnx").exists() and not (out / "model.dynamic.onnx").exists()
    assert (out / "sizes/24/weights.safetensors").exists() and (out / "report.json").exists()


def test_another_checkpoint_starts_over_without_leftovers(image_dir, resnet8_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    _calibrate(image_dir, resnet8_checkpoint, out, sizes=(16, 24))
    _fake_artifact(out, 24)
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save(randomize_bn(create_model("cifar_resnet8"), seed=1).state_dict(), other)
    calibrate_to_bundle(other, [16], image_dir, out, batches=3, batch_size=4, arch="cifar_resnet8")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    bundle = Bundle.open(out)
    listed = [bundle.size(16).weights, bundle.source.weights]  # new names: the old manifest's files were never overwritten
    assert files == sorted([".mmdeploy.lock", "manifest.json", *listed]) and listed[0].startswith("sizes/16/")
    assert not (out / "sizes/24").exists()


def test_recalibration_keeps_the_bundles_preprocessing(image_dir, resnet8_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    calibrate_to_bundle(resnet8_checkpoint, [16], image_dir, out, batches=3, batch_size=4, mean=mean, std=std)
    again = calibrate_to_bundle(resnet8_checkpoint, [16, 24], image_dir, out, batches=3, batch_size=4, training_size=24)
    assert again.reused == [16], "no options: the bundle's preprocessing, so 16 is reused"
    bundle = Bundle.open(out)
    assert bundle.manifest["sizes"]["24"]["calibration"]["preprocess"]["mean"] == mean
    assert bundle.training_size == 24
    with pytest.raises(MMDeployError, match="uses preprocessing"):
        calibrate_to_bundle(resnet8_checkpoint, [32], image_dir, out, batches=3, batch_size=4, preprocess="imagenet")


def test_bundle_files_are_readable_by_others_and_record_an_absolute_data_path(image_dir, resnet8_checkpoint, tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(image_dir.parent)
    out = tmp_path / "bundle"
    calibrate_to_bundle(resnet8_checkpoint, [16], image_dir.name, out, batches=3, batch_size=4)
    mask = os.umask(0)
    os.umask(mask)
    for rel in ("sizes/16/weights.safetensors", "source/weights.safetensors"):
        assert (out / rel).stat().st_mode & 0o777 == 0o666 & ~mask, rel
    assert Bundle.open(out).manifest["sizes"]["16"]["calibration"]["data"] == str(image_dir.resolve())


def test_calibration_in_memory_bounded_chunks_equals_one_pass(image_dir, resnet8_checkpoint, tmp_path, monkeypatch):
    import mmdeploy.calib.batching as batching

    calibrate_to_bundle(resnet8_checkpoint, [16, 24], image_dir, tmp_path / "one", batches=4, batch_size=4)
    monkeypatch.setattr(batching, "CHUNK_BYTES", 3 * 32 * 32 * 5)  # room for one batch of 4 images per chunk
    assert len(batching.memory_chunks([(i, [0, 1, 2, 3]) for i in range(4)], 3 * 32 * 32)) == 4
    summary = calibrate_to_bundle(resnet8_checkpoint, [16, 24], image_dir, tmp_path / "chunked", batches=4, batch_size=4)
    assert summary.images == 16
    for s in (16, 24):
        one = load_file(str(tmp_path / f"one/sizes/{s}/weights.safetensors"))
        chunked = load_file(str(tmp_path / f"chunked/sizes/{s}/weights.safetensors"))
        for k in one:
            torch.testing.assert_close(chunked[k], one[k], rtol=1e-6, atol=1e-7)
