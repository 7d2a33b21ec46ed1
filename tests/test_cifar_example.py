"""Fast CPU tests of the CIFAR-10 example (examples/cifar10) on tiny synthetic data."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cifar10 import data as cdata  # noqa: E402
from cifar10.data import (  # noqa: E402
    CIFAR10_CLASSES, CIFAR10DataError, CIFAR10DataModule, DeviceBatches, crop_flip, detect_format, load_cifar10,
)
from cifar10.model import CIFARClassifier, cifar_resnet18, cifar_vgg11_bn, cosine  # noqa: E402

PIL = pytest.importorskip("PIL.Image")

N_TRAIN, N_TEST = 3, 2  # images per class


# ------------------------------------------------------------------------------------------------
# synthetic data in the three formats
# ------------------------------------------------------------------------------------------------
def _image(rng: np.random.Generator) -> np.ndarray:
    # smooth-ish content so that JPEG round trips are stable
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar_tree")
    rng = np.random.default_rng(0)
    # classes written in reverse order: labels must still follow alphabetical order
    for cls in reversed(CIFAR10_CLASSES):
        for split, n in (("train", N_TRAIN), ("test", N_TEST)):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i:04d}.jpg").write_bytes(_jpeg(_image(rng)))
    return root


@pytest.fixture(scope="module")
def archive(image_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cifar_archive") / "cifar10-tiny.tar.xz"
    with tarfile.open(out, "w:xz") as tf:
        for split in ("test", "train"):  # order in the archive must not matter
            tf.add(image_tree / split, arcname=split)
    return out


@pytest.fixture(scope="module")
def pickle_dir(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("cifar_pickle") / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, 4)]
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": name.encode()}, fh)
        xs.append(x)
        ys.append(y)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}, fh)
    return root, np.concatenate(xs), np.concatenate(ys)


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------
def test_resnet18_architecture():
    net = cifar_resnet18(10)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.padding == (1, 1)
    assert net.conv1.bias is None
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert sum(p.numel() for p in net.parameters()) == 11_173_962  # torchvision resnet18, 3x3 stem, 10 classes
    assert torch.all(net.fc.bias == 0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # Kaiming normal, fan-in, ReLU gain: std = sqrt(2 / fan_in)
    w = net.layer4[1].conv2.weight  # 512 x 512 x 3 x 3
    fan_in = w.shape[1] * 9
    assert abs(w.std().item() / (2.0 / fan_in) ** 0.5 - 1) < 0.02
    assert abs(w.mean().item()) < 1e-3
    w = net.conv1.weight
    assert abs(w.std().item() / (2.0 / 27) ** 0.5 - 1) < 0.15
    net.eval()
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_narrow_resnet18():
    net = cifar_resnet18(10, width=8)
    assert net.conv1.out_channels == 8 and net.bn1.num_features == 8
    assert [getattr(net, f"layer{i}")[0].conv1.out_channels for i in range(1, 5)] == [8, 16, 32, 64]
    assert net.fc.in_features == 64
    assert sum(1 for m in net.modules() if isinstance(m, torch.nn.Conv2d)) == 20  # 17 + 3 downsample
    assert sum(1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)) == 20
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_vgg11_bn_architecture():
    net = cifar_vgg11_bn(10, width=16)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64, 128, 128, 128, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    kinds = [type(m).__name__ for m in net.features]
    # conv-BN-ReLU, with a max-pool after the 1st, 2nd, 4th, 6th and 8th conv
    assert "".join({"Conv2d": "c", "BatchNorm2d": "b", "ReLU": "r", "MaxPool2d": "p"}[k] for k in kinds) == (
        "cbrp" "cbrp" "cbr" "cbrp" "cbr" "cbrp" "cbr" "cbrp")
    # 576,432 conv + 1,376 BN + 1,290 linear parameters, computed by hand
    assert sum(p.numel() for p in net.parameters()) == 579_098
    assert torch.all(net.fc.bias == 0)
    assert all(torch.all(m.weight == 1) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    w = convs[5].weight  # 128 x 128 x 3 x 3, Kaiming normal fan-in
    assert abs(w.std().item() / (2.0 / (128 * 9)) ** 0.5 - 1) < 0.05
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(CIFARClassifier(arch="vgg11", width=4).net.features[0], torch.nn.Conv2d)
    with pytest.raises(ValueError, match="arch must be one of resnet18, vgg11, got 'vgg16'"):
        CIFARClassifier(arch="vgg16")


def test_weight_decay_groups_and_cosine():
    module = CIFARClassifier(width=8)
    groups = module.param_groups()
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in groups[0]["params"])  # conv/linear weights only
    bn_params = {id(p) for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert bn_params <= {id(p) for p in groups[1]["params"]}
    assert id(module.net.fc.bias) in {id(p) for p in groups[1]["params"]}
    assert cosine(0, 10) == 1.0 and cosine(10, 10) == 0.0 and abs(cosine(5, 10) - 0.5) < 1e-12


# ------------------------------------------------------------------------------------------------
# data formats, cache, errors
# ------------------------------------------------------------------------------------------------
def test_formats_agree(image_tree, archive, tmp_path):
    assert detect_format(image_tree) == "folder" and detect_format(archive) == "archive"
    a = load_cifar10(archive, cache_dir=tmp_path)
    f = load_cifar10(image_tree, cache_dir=tmp_path)
    assert a["classes"] == list(CIFAR10_CLASSES)  # alphabetical
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(a[k], f[k])
    assert a["x_train"].shape == (10 * N_TRAIN, 32, 32, 3) and a["x_train"].dtype == np.uint8
    assert a["x_test"].shape == (10 * N_TEST, 32, 32, 3)
    np.testing.assert_array_equal(a["y_train"], np.repeat(np.arange(10), N_TRAIN))
    # label 0 is 'airplane', image 0000 of it
    ref = np.asarray(PIL.open(image_tree / "train" / "airplane" / "0000.jpg").convert("RGB"))
    np.testing.assert_array_equal(a["x_train"][0], ref)


def test_pickle_format(pickle_dir):
    folder, x, y = pickle_dir
    for p in (folder, folder.parent):  # the batches folder, or the folder that holds it
        assert detect_format(p) == "pickle"
        d = load_cifar10(p)
        assert d["classes"] == list(CIFAR10_CLASSES)
        assert d["x_train"].shape == (20, 32, 32, 3) and d["x_test"].shape == (4, 32, 32, 3)
        np.testing.assert_array_equal(d["x_train"][0], x[0].reshape(3, 32, 32).transpose(1, 2, 0))
        np.testing.assert_array_equal(d["y_train"], y[:20])
        np.testing.assert_array_equal(d["y_test"], y[20:])


def test_cache_is_reused(archive, tmp_path, monkeypatch):
    first = load_cifar10(archive, cache_dir=tmp_path)
    cached = list(tmp_path.glob("*.npz"))
    assert len(cached) == 1 and not list(tmp_path.glob("*.tmp"))  # (a .lock file may stay)

    def no_decode(*a, **k):
        raise AssertionError("decoded again although a cache exists")

    monkeypatch.setattr(cdata, "_decode_archive", no_decode)
    second = load_cifar10(archive, cache_dir=tmp_path)
    np.testing.assert_array_equal(first["x_train"], second["x_train"])
    assert second["classes"] == first["classes"]
    # a damaged cache file is rebuilt, not trusted
    cached[0].write_bytes(b"garbage")
    monkeypatch.undo()
    third = load_cifar10(archive, cache_dir=tmp_path)
    np.testing.assert_array_equal(first["x_test"], third["x_test"])


def test_cache_skips_read_only_folder(archive, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    target = ro / archive.name
    target.write_bytes(archive.read_bytes())
    ro.chmod(0o555)
    try:
        monkeypatch.setenv("LIGHTNING_BNINIT_CACHE", str(tmp_path / "cache"))
        load_cifar10(target)
        assert not list(ro.glob("*.npz"))
        assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    finally:
        ro.chmod(0o755)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.tar.xz"):
        load_cifar10(tmp_path / "nowhere.tar.xz")


def test_truncated_archive(archive, tmp_path):
    bad = tmp_path / "truncated.tar.xz"
    bad.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CIFAR10DataError, match="truncated or corrupt") as e:
        load_cifar10(bad, cache_dir=tmp_path)
    assert str(bad) in str(e.value)
    assert not list(tmp_path.glob("*.npz"))


def test_foreign_archive(tmp_path):
    bad = tmp_path / "foreign.tar.xz"
    with tarfile.open(bad, "w:xz") as tf:
        info = tarfile.TarInfo("docs/readme.txt")
        payload = b"not an image data set"
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(CIFAR10DataError, match=r"no train/<class>/<image>") as e:
        load_cifar10(bad, cache_dir=tmp_path)
    assert str(bad) in str(e.value) and "docs" in str(e.value)
    not_tar = tmp_path / "notes.txt"
    not_tar.write_text("hello")
    with pytest.raises(CIFAR10DataError, match="not a tar archive"):
        load_cifar10(not_tar)


def test_wrong_class_count(image_tree, tmp_path):
    out = tmp_path / "three.tar.xz"
    with tarfile.open(out, "w:xz") as tf:
        for split in ("train", "test"):
            for cls in CIFAR10_CLASSES[:3]:
                tf.add(image_tree / split / cls, arcname=f"cifar/{split}/{cls}")
    with pytest.raises(CIFAR10DataError, match="found 3 classes .*expected 10"):
        load_cifar10(out, cache_dir=tmp_path)
    assert load_cifar10(out, cache_dir=tmp_path, num_classes=3)["classes"] == list(CIFAR10_CLASSES[:3])


# ------------------------------------------------------------------------------------------------
# on-device augmentation
# ------------------------------------------------------------------------------------------------
def _unique_images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)


def test_crop_flip_matches_reflect_padding():
    imgs = _unique_images(6)
    padded = F.pad(imgs.permute(0, 3, 1, 2).float(), (4, 4, 4, 4), mode="reflect")  # (N, C, 40, 40)
    idx = torch.tensor([0, 1, 2, 3, 4, 5, 5])
    oy = torch.tensor([0, 8, 3, 4, 0, 8, 2])
    ox = torch.tensor([0, 8, 5, 4, 8, 0, 7])
    flip = torch.tensor([False, True, False, True, True, False, True])
    out = crop_flip(imgs, idx, oy, ox, flip)
    assert out.shape == (7, 32, 32, 3) and out.dtype == torch.uint8
    for j in range(7):
        ref = padded[idx[j], :, oy[j]:oy[j] + 32, ox[j]:ox[j] + 32]
        if flip[j]:
            ref = ref.flip(-1)
        torch.testing.assert_close(out[j].permute(2, 0, 1).float(), ref, rtol=0, atol=0)
    # centre crop without flip is the image itself
    same = crop_flip(imgs, torch.arange(6), torch.full((6,), 4), torch.full((6,), 4), torch.zeros(6, dtype=torch.bool))
    assert torch.equal(same, imgs)


def test_device_batches():
    n = 40
    imgs, labels = _unique_images(n), torch.arange(n)  # label = index, to find each source image
    batches = DeviceBatches(imgs, labels, batch_size=16, train=True, seed=3)
    assert len(batches) == 2  # last partial batch dropped in training
    padded = F.pad(imgs.permute(0, 3, 1, 2).float() / 255, (4, 4, 4, 4), mode="reflect")
    seen = []
    for x, y in batches:
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert 0.0 <= x.min() and x.max() <= 1.0
        for xi, yi in zip(x, y):
            cands = [
                w.flip(-1) if f else w
                for oy in range(9) for ox in range(9) for f in (False, True)
                for w in [padded[yi, :, oy:oy + 32, ox:ox + 32]]
            ]
            assert any(torch.allclose(xi, c, atol=1e-6) for c in cands)
        seen.append(y)
    assert len(torch.cat(seen).unique()) == 32  # a permutation: no repeats
    # reproducible: same seed, same epoch -> same batches; next epoch differs
    ep0 = [b[0] for b in DeviceBatches(imgs, labels, 16, train=True, seed=3)]
    again = DeviceBatches(imgs, labels, 16, train=True, seed=3)
    e0, e1 = [b[0] for b in again], [b[0] for b in again]
    assert all(torch.equal(a, b) for a, b in zip(ep0, e0))
    assert not torch.equal(e0[0], e1[0])
    other = [b[0] for b in DeviceBatches(imgs, labels, 16, train=True, seed=4)]
    assert not torch.equal(other[0], ep0[0])
    # evaluation: every image once, in order, unaugmented; normalisation option
    ev = list(DeviceBatches(imgs, labels, 16, train=False, channels_last=False))
    assert [len(b[1]) for b in ev] == [16, 16, 8] and ev[0][0].is_contiguous()
    torch.testing.assert_close(ev[0][0], imgs[:16].permute(0, 3, 1, 2).float() / 255)
    normed = next(iter(DeviceBatches(imgs, labels, 16, train=False, mean=(0.5,) * 3, std=(0.25,) * 3)))[0]
    torch.testing.assert_close(normed, (ev[0][0] - 0.5) / 0.25)


def test_datamodule_subset_and_seed(archive, tmp_path):
    torch.manual_seed(7)
    dm = CIFAR10DataModule(str(archive), batch_size=4, subset=20, test_subset=10, cache_dir=str(tmp_path))
    dm.setup("fit")
    assert dm.seed == 7 and dm.num_classes == 10
    x, y = dm._tensors["train"]
    assert len(y) == 20 and torch.equal(torch.bincount(y), torch.full((10,), 2))
    assert len(dm._tensors["test"][1]) == 10
    assert len(dm.train_dataloader()) == 5 and len(dm.test_dataloader()) == 1
    from lightning.pytorch.utilities.model_helpers import is_overridden

    assert not is_overridden("val_dataloader", dm)  # no validation loop without val_split
    dm2 = CIFAR10DataModule(str(archive), batch_size=4, val_split=10, cache_dir=str(tmp_path), seed=1)
    dm2.setup("fit")
    assert is_overridden("val_dataloader", dm2)
    assert len(dm2._tensors["train"][1]) == 20 and len(dm2.val_dataloader()) == 1


# ------------------------------------------------------------------------------------------------
# plain loop and the LightningCLI script
# ------------------------------------------------------------------------------------------------
def test_plain_loop_runs(archive, tmp_path):
    from plain_cifar_loop import run_plain

    arrays = load_cifar10(archive, cache_dir=tmp_path)
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    res = run_plain((t(arrays["x_train"]), t(arrays["y_train"])), (t(arrays["x_test"]), t(arrays["y_test"])), 10,
                    torch.device("cpu"), epochs=1, width=4, batch_size=8, channels_last=False)
    assert len(res["epoch_seconds"]) == 1 and 0.0 <= res["test_acc"] <= 1.0


def test_fit_with_bninit_in_process(archive, tmp_path):
    import lightning.pytorch as pl

    import lightning_bninit as bninit
    from lightning_bninit.method.input_norm import find_input_norm

    class FirstStep(pl.Callback):
        """bn1's scale before and after the first optimizer step."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                self.before = pl_module.net.bn1.weight.detach().clone()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 0:
                self.after = pl_module.net.bn1.weight.detach().clone()

    def fit(c: float, batches: int):
        pl.seed_everything(1, verbose=False)
        model = CIFARClassifier(width=4, fused=True)  # fused SGD under BNInit's per-step group split
        dm = CIFAR10DataModule(str(archive), batch_size=8, cache_dir=str(tmp_path))
        cb, first = bninit.BNInit(input_norm=True, scale_lr_divisor=c, monitor=False), FirstStep()
        trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=batches, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=tmp_path, callbacks=[cb, first])
        trainer.fit(model, datamodule=dm)
        return model, dm, cb, trainer, first.after - first.before

    model, dm, cb, trainer, revised = fit(100.0, 2)
    norm = find_input_norm(model)
    assert norm is not None and norm.num_features == 3 and not norm.bias.requires_grad
    assert len(cb.layer_names) == 21  # 20 in the ResNet-18 + the input BN
    # The example's optimizer (fused SGD with momentum, BN in a no-decay group) moves the scales with lr / 100: the
    # first step, from identical weights and batch, is exactly 1/100 of the step with c = 1 (to float32 round-off
    # of 0.1 + delta).
    *_, plain = fit(1.0, 1)
    assert plain.abs().max() > 1e-4
    torch.testing.assert_close(revised * 100, plain, rtol=0.02, atol=2e-6)
    (res,) = trainer.test(model, datamodule=dm, verbose=False)
    assert set(res) >= {"test_acc", "test_loss"}


@pytest.mark.parametrize("bninit", [False, True], ids=["plain", "bninit"])
def test_cli_fit_and_test(archive, tmp_path, bninit):
    results = tmp_path / "results.jsonl"
    cmd = [
        sys.executable, str(ROOT / "examples" / "cifar10" / "main.py"), "fit",
        "--config", str(ROOT / "examples" / "cifar10" / "configs" / "cpu_small.yaml"),
        f"--data.data_path={archive}", f"--data.cache_dir={tmp_path}", "--data.subset=null",
        "--data.test_subset=null", "--data.batch_size=8", "--data.eval_batch_size=16",
        "--model.width=4", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        f"--trainer.default_root_dir={tmp_path}", f"--results_json={results}",
    ]
    if bninit:  # also the VGG and the CSV log that keeps the BN monitor's statistics
        cmd += ["--bninit=true", "--bninit.input_norm=true", "--model.arch=vgg11", "--csv_log=true",
                "--trainer.log_every_n_steps=1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 1 and 0.0 <= rows[0]["test_acc"] <= 1.0 and rows[0]["test_loss"] > 0
    assert rows[0]["seed"] == 1
    csv = list(tmp_path.glob("lightning_logs/version_0/metrics.csv"))
    if not bninit:
        assert not csv
        return
    header = csv[0].read_text().splitlines()[0].split(",")
    assert {"bn/all/scale_drift", "bn_xhat_bound_ratio/01_net_features_1", "bn_scale_drift_rel/00_bninit_input_norm"
            } <= set(header)


REAL_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"


@pytest.mark.skipif(not REAL_ARCHIVE.is_file() or os.environ.get("BNINIT_TEST_REAL_CIFAR") != "1",
                    reason="opt-in (BNINIT_TEST_REAL_CIFAR=1) and needs shared/data/cifar10-jpeg.tar.xz; "
                           "decoding takes ~13 s once, then the cache is read")
def test_real_archive_decodes():
    d = load_cifar10(REAL_ARCHIVE)
    assert d["x_train"].shape == (50000, 32, 32, 3) and d["x_test"].shape == (10000, 32, 32, 3)
    assert d["classes"] == list(CIFAR10_CLASSES)
    assert np.bincount(d["y_train"]).tolist() == [5000] * 10 and np.bincount(d["y_test"]).tolist() == [1000] * 10
    mean = d["x_train"].reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=2e-4)


def test_compare_in_fit_on_the_cifar_script(archive, tmp_path):
    """`bninit compare` with `test: in_fit` (as compare_gpu.yaml) on the real script and the synthetic archive."""
    exp = tmp_path / "exp.yaml"
    configs = ROOT / "examples" / "cifar10"
    exp.write_text(
        f"script: {configs / 'main.py'}\nconfig: {configs / 'configs' / 'cpu_small.yaml'}\nmetrics: [test_acc]\n"
        "test: in_fit\n"
        f"args: [--test_after_fit=true, --bninit.input_norm=true, --data.data_path={archive},"
        f" --data.cache_dir={tmp_path}, --data.subset=null, --data.test_subset=null, --data.batch_size=8,"
        " --model.width=4, --trainer.max_epochs=1, --trainer.limit_train_batches=2]\n"
    )
    out = tmp_path / "results.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "lightning_bninit", "compare", "--config", str(exp), "--seeds", "1",
                           "--out", str(out), "--no-progress"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["arm"] for r in rows) == ["bninit", "standard"]
    assert all(0.0 <= r["test_acc"] <= 1.0 and "error" not in r for r in rows)
    assert not (tmp_path / "results_runs" / "bninit" / "seed_1" / "test.log").exists()  # one process per pair
