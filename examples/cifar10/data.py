"""CIFAR-10 for the example: three on-disk formats, a uint8 cache, and batches built on the device.

Formats accepted by :func:`load_cifar10` (auto-detected from ``path``):

* torchvision's ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``, ``batches.meta``),
  or a folder that contains it;
* an image-folder tree ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (classes in alphabetical order);
* a tar archive of that tree (``.tar.xz``, ``.tar.gz``, ``.tar``), e.g. ``shared/data/cifar10-jpeg.tar.xz``.
  Members are read straight from the archive (streaming; nothing is extracted) and decoded once with
  Pillow into uint8 arrays that are cached as an ``.npz`` file (atomic write, so parallel runs can
  race on it safely). Leading folders (``cifar10/train/...``) are allowed.

The data module keeps the whole uint8 dataset as one tensor on the training device and assembles
batches there (:class:`DeviceBatches`): random crop with reflect padding 4 and horizontal flip are one
vectorised gather per batch, followed by the conversion to float in [0, 1] (optionally normalised
with fixed CIFAR-10 mean/std when the input BN of BNInit is not used). There are no worker processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import lzma
import os
import pickle
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

try:  # the example runs with Lightning; the plain benchmark only needs torch
    from lightning.pytorch import LightningDataModule
except ImportError:  # pragma: no cover
    LightningDataModule = object  # type: ignore[assignment,misc]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Decoded train statistics of shared/data/cifar10-jpeg.tar.xz (RGB, [0, 1]).
CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)
CIFAR10_STD = (0.2452, 0.2428, 0.2606)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CACHE_VERSION = 1
# Where the data module looks when ``data_path`` is not given (relative paths: to the current
# directory, then to the repository root).
DEFAULT_CANDIDATES = (
    "shared/data/cifar10-jpeg.tar.xz",
    "../shared/data/cifar10-jpeg.tar.xz",
    "data/cifar10-jpeg.tar.xz",
    "data/cifar-10-batches-py",
)
EXPECTED_LAYOUT = "train/<class>/<image>.jpg and test/<class>/<image>.jpg"


class CIFAR10DataError(RuntimeError):
    """The data at a path is not a readable CIFAR-10 in one of the supported formats."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
class _Arrays(dict):
    """``x_train`` (N,32,32,3) uint8, ``y_train`` (N,) int64, ``x_test``, ``y_test``, ``classes``."""


def detect_format(path: str | os.PathLike) -> str:
    """Return ``"pickle"``, ``"folder"`` or ``"archive"`` for ``path``; raise a clear error otherwise."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"CIFAR-10 data not found at {str(p)!r}: expected a cifar-10-batches-py folder, a folder with "
            f"{EXPECTED_LAYOUT}, or a .tar.xz of that tree"
        )
    if p.is_dir():
        if (p / "data_batch_1").is_file() or (p / "cifar-10-batches-py" / "data_batch_1").is_file():
            return "pickle"
        if (p / "train").is_dir() and (p / "test").is_dir():
            return "folder"
        raise CIFAR10DataError(
            f"{str(p)!r} is a folder but neither a cifar-10-batches-py folder (data_batch_1..5, test_batch) "
            f"nor an image-folder tree ({EXPECTED_LAYOUT})"
        )
    if tarfile.is_tarfile(p) or p.name.endswith((".tar", ".tar.xz", ".txz", ".tar.gz", ".tgz")):
        return "archive"
    raise CIFAR10DataError(
        f"{str(p)!r} is a file but not a tar archive; expected a .tar.xz of {EXPECTED_LAYOUT}"
    )


def load_cifar10(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    num_classes: int = 10,
    use_cache: bool = True,
) -> _Arrays:
    """Load CIFAR-10 from any supported format as uint8 NHWC arrays (decoded archives are cached)."""
    fmt = detect_format(path)
    p = Path(path)
    if fmt == "pickle":
        arrays = _load_pickle(p / "cifar-10-batches-py" if (p / "cifar-10-batches-py").is_dir() else p)
        _check_classes(arrays["classes"], num_classes, p)
        return arrays
    key = _archive_key(p) if fmt == "archive" else _folder_key(p)
    cache_file = _cache_path(p, key, cache_dir)
    if use_cache and cache_file is not None and cache_file.is_file():
        arrays = _read_cache(cache_file)
        if arrays is not None:
            _check_classes(arrays["classes"], num_classes, p)
            return arrays
    with _decode_lock(cache_file if use_cache else None):
        # Parallel runs starting together: the first decodes, the others wait and then read its cache.
        if use_cache and cache_file is not None and cache_file.is_file():
            arrays = _read_cache(cache_file)
            if arrays is not None:
                _check_classes(arrays["classes"], num_classes, p)
                return arrays
        arrays = _decode_archive(p) if fmt == "archive" else _decode_folder(p)
        _check_classes(arrays["classes"], num_classes, p)
        if use_cache and cache_file is not None:
            _write_cache(cache_file, arrays)
    return arrays


def _check_classes(classes: Sequence[str], num_classes: int, path: Path) -> None:
    if num_classes and len(classes) != num_classes:
        raise CIFAR10DataError(
            f"{str(path)!r}: found {len(classes)} classes ({', '.join(classes)}), expected {num_classes}"
        )


def _load_pickle(folder: Path) -> _Arrays:
    def read(name: str) -> dict:
        f = folder / name
        if not f.is_file():
            raise CIFAR10DataError(f"{str(folder)!r}: missing {name} (a cifar-10-batches-py folder holds "
                                   "data_batch_1..5, test_batch and batches.meta)")
        try:
            with open(f, "rb") as fh:
                return pickle.load(fh, encoding="bytes")  # torchvision's own format
        except Exception as e:  # noqa: BLE001 - report any unpickling problem with the file name
            raise CIFAR10DataError(f"{str(f)!r}: cannot read CIFAR-10 pickle ({type(e).__name__}: {e})") from e

    def xy(batches: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
        y = np.concatenate([np.asarray(b.get(b"labels", b.get(b"fine_labels")), dtype=np.int64) for b in batches])
        return np.ascontiguousarray(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), y

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_train, y_train = xy(train)
    x_test, y_test = xy([read("test_batch")])
    meta_file = folder / "batches.meta"
    if meta_file.is_file():
        with open(meta_file, "rb") as fh:
            meta = pickle.load(fh, encoding="bytes")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[b"label_names"]]
    else:
        classes = list(CIFAR10_CLASSES)
    return _Arrays(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=classes)


def _split_member(name: str) -> tuple[str, str, str] | None:
    """``[prefix/]train/<class>/<file>`` -> (split, class, file); anything else -> None."""
    parts = [q for q in name.replace("\\", "/").split("/") if q not in ("", ".")]
    if len(parts) < 3 or parts[-3] not in ("train", "test"):
        return None
    if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-3], parts[-2], parts[-1]


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001
        raise CIFAR10DataError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e
    if arr.shape != (32, 32, 3):
        raise CIFAR10DataError(f"{where}: image is {arr.shape[1]}x{arr.shape[0]}, expected 32x32")
    return arr


def _assemble(items: dict[str, dict[str, list[tuple[str, np.ndarray]]]], path: Path) -> _Arrays:
    """items[split][class] = [(file name, HWC uint8)] -> arrays; classes sorted alphabetically."""
    if not items.get("train") or not items.get("test"):
        missing = [s for s in ("train", "test") if not items.get(s)]
        raise CIFAR10DataError(
            f"{str(path)!r}: no images under {' or '.join(m + '/<class>/' for m in missing)}; expected {EXPECTED_LAYOUT}"
        )
    classes = sorted(items["train"])
    if sorted(items["test"]) != classes:
        raise CIFAR10DataError(
            f"{str(path)!r}: train classes {classes} differ from test classes {sorted(items['test'])}"
        )
    out = _Arrays(classes=classes)
    for split in ("train", "test"):
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for _, arr in sorted(items[split][cls], key=lambda t: t[0]):
                xs.append(arr)
                ys.append(label)
        out[f"x_{split}"] = np.stack(xs)
        out[f"y_{split}"] = np.asarray(ys, dtype=np.int64)
    return out


def _decode_archive(path: Path) -> _Arrays:
    """Decode every image of a tar archive (streamed, no extraction)."""
    items: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    seen, example = 0, None
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                seen += 1
                example = example or member.name
                if not member.isfile():
                    continue
                parsed = _split_member(member.name)
                if parsed is None:
                    continue
                split, cls, fname = parsed
                fh = tf.extractfile(member)
                data = fh.read() if fh is not None else b""
                items[split].setdefault(cls, []).append(
                    (fname, _decode_image(data, f"{str(path)!r} member {member.name!r}"))
                )
    except CIFAR10DataError:
        raise
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error, OSError) as e:
        raise CIFAR10DataError(
            f"{str(path)!r}: archive is truncated or corrupt ({type(e).__name__}: {e}); "
            f"expected a complete tar archive of {EXPECTED_LAYOUT}"
        ) from e
    if not items["train"] and not items["test"]:
        raise CIFAR10DataError(
            f"{str(path)!r}: no train/<class>/<image> or test/<class>/<image> members among its {seen} "
            f"members (first: {example!r}); expected a tar archive of {EXPECTED_LAYOUT}"
        )
    return _assemble(items, path)


def _folder_files(root: Path) -> list[tuple[str, str, Path]]:
    out = []
    for split in ("train", "test"):
        for cls_dir in sorted(q for q in (root / split).iterdir() if q.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    out.append((split, cls_dir.name, f))
    return out


def _decode_folder(root: Path) -> _Arrays:
    items: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for split, cls, f in _folder_files(root):
        items[split].setdefault(cls, []).append((f.name, _decode_image(f.read_bytes(), str(f))))
    return _assemble(items, root)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
def _archive_key(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _folder_key(root: Path) -> str:
    h = hashlib.sha256(str(root.resolve()).encode())
    for split, cls, f in _folder_files(root):
        st = f.stat()
        h.update(f"{split}/{cls}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    env = os.environ.get("LIGHTNING_BNINIT_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lightning_bninit"


def _writable_dir(d: Path) -> bool:
    # Mode bits too, not only os.access: a folder marked read-only (0555) is left alone even by root.
    try:
        return d.is_dir() and os.access(d, os.W_OK) and bool(d.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    except OSError:
        return False


def _cache_path(path: Path, key: str, cache_dir: str | os.PathLike | None) -> Path | None:
    stem = path.name.split(".")[0] or "cifar10"
    name = f"{stem}.decoded-v{CACHE_VERSION}-{key}.npz"
    if cache_dir is not None:
        return Path(cache_dir) / name
    beside = path.parent if path.is_file() else path
    if _writable_dir(beside):
        return beside / name
    return default_cache_dir() / name


@contextlib.contextmanager
def _decode_lock(cache_file: Path | None) -> Iterator[None]:
    """An exclusive advisory lock (POSIX ``flock``) beside the cache file; a no-op where unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    fh = None
    if cache_file is not None and fcntl is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            fh = open(cache_file.with_name(cache_file.name + ".lock"), "a")
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:
            if fh is not None:
                fh.close()
            fh = None
    try:
        yield
    finally:
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


def _read_cache(cache_file: Path) -> _Arrays | None:
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            arrays = _Arrays(
                x_train=z["x_train"], y_train=z["y_train"].astype(np.int64),
                x_test=z["x_test"], y_test=z["y_test"].astype(np.int64), classes=[str(c) for c in z["classes"]],
            )
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
        return None
    if arrays["x_train"].dtype != np.uint8 or arrays["x_train"].shape[1:] != (32, 32, 3):
        return None
    return arrays


def _write_cache(cache_file: Path, arrays: _Arrays) -> None:
    """Write via a temporary file in the same folder, then rename: readers never see a partial file."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=cache_file.name + ".", suffix=".tmp", dir=cache_file.parent)
    except OSError:
        return  # no writable cache: decode again next time
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, x_train=arrays["x_train"], y_train=arrays["y_train"], x_test=arrays["x_test"],
                     y_test=arrays["y_test"], classes=np.asarray(arrays["classes"]))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is meant to be shared
        os.replace(tmp, cache_file)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def find_data_path(data_path: str | os.PathLike | None) -> Path:
    """``data_path`` if given, else the first existing default candidate (see ``DEFAULT_CANDIDATES``)."""
    if data_path is not None:
        return Path(data_path).expanduser()
    env = os.environ.get("CIFAR10_PATH")
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    tried = []
    for base in (Path.cwd(), repo_root):
        for c in DEFAULT_CANDIDATES:
            p = base / c
            tried.append(str(p))
            if p.exists():
                return p
    raise FileNotFoundError("no CIFAR-10 data given (data_path / $CIFAR10_PATH) and none found at: " + ", ".join(tried))


def subset_indices(labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """The first ``ceil(k / num_classes)`` images of each class, cut to ``k`` in all (class-balanced)."""
    per_class = -(-k // num_classes)
    picked = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    idx = np.sort(np.concatenate(picked))
    if len(idx) > k:  # drop from the end of the interleaved order to stay balanced
        order = np.argsort(np.concatenate([np.arange(len(q)) for q in picked]), kind="stable")
        idx = np.sort(np.concatenate(picked)[order][:k])
    return idx


# --------------------------------------------------------------------------------------------
# On-device batches
# --------------------------------------------------------------------------------------------
def reflect_index(size: int, pad: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Map a coordinate of the reflect-padded axis (length size + 2*pad) to the source coordinate."""
    i = torch.arange(-pad, size + pad, device=device)
    i = i.abs()  # reflect at 0 (edge not repeated)
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)


def crop_flip(
    images: torch.Tensor,
    idx: torch.Tensor,
    oy: torch.Tensor,
    ox: torch.Tensor,
    flip: torch.Tensor,
    pad: int = 4,
    refl: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Random crop of the reflect-padded images plus horizontal flip, as one gather.

    ``images`` (N, H, W, C) uint8; ``idx`` (B,) which images; ``oy``/``ox`` (B,) crop offsets in
    [0, 2*pad]; ``flip`` (B,) bool. Returns (B, H, W, C): ``padded[idx, oy:oy+H, ox:ox+W]``, mirrored
    left-right where ``flip``.
    """
    n, h, w, c = images.shape
    dev = images.device
    if refl is None:
        refl = reflect_index(max(h, w), pad, dev)
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = refl[oy[:, None] + ar_h]  # (B, H)
    cols_in_crop = torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # (B, W)
    cols = refl[ox[:, None] + cols_in_crop]
    return images[idx[:, None, None], rows[:, :, None], cols[:, None, :]]


class DeviceBatches:
    """Iterable of ``(x, y)`` batches built on the device that holds ``images``.

    ``images`` (N, 32, 32, 3) uint8 and ``labels`` (N,) int64, both already on the target device.
    With ``train=True`` every epoch reshuffles and draws one crop offset and flip per image, from a
    generator seeded with ``seed + epoch`` (epoch = number of iterations started), so two runs with
    the same seed see the same batches. ``x`` is float32 (N, C, H, W) in [0, 1] (or normalised with
    ``mean``/``std``), stored channels-last unless ``channels_last=False``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        train: bool,
        seed: int = 0,
        drop_last: Optional[bool] = None,
        pad: int = 4,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C) uint8, got {tuple(images.shape)} {images.dtype}")
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.seed, self.pad = int(batch_size), train, int(seed), pad
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last, self.dtype = channels_last, dtype
        self.epoch = 0
        dev = images.device
        self.refl = reflect_index(images.shape[1], pad, dev)
        c = images.shape[-1]
        if mean is not None or std is not None:
            m = torch.tensor(mean if mean is not None else [0.0] * c, dtype=torch.float32, device=dev)
            s = torch.tensor(std if std is not None else [1.0] * c, dtype=torch.float32, device=dev)
            self.scale, self.shift = (1.0 / (255.0 * s)).view(1, c, 1, 1), (-m / s).view(1, c, 1, 1)
        else:
            self.scale, self.shift = None, None

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def to_float(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        x = x_nhwc.permute(0, 3, 1, 2)  # a channels-last view of NCHW
        x = x.to(self.dtype)
        if self.scale is not None:
            x = torch.addcmul(self.shift.to(self.dtype), x, self.scale.to(self.dtype))
        else:
            x = x.mul_(1.0 / 255.0)
        return x if self.channels_last else x.contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b, dev = len(self.labels), self.batch_size, self.device
        steps = len(self)
        if not self.train:
            for i in range(steps):
                sl = slice(i * b, min((i + 1) * b, n))
                yield self.to_float(self.images[sl]), self.labels[sl]
            return
        g = torch.Generator(device=dev)
        g.manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63 - 1))
        self.epoch += 1
        perm = torch.randperm(n, device=dev, generator=g)
        offsets = torch.randint(0, 2 * self.pad + 1, (2, n), device=dev, generator=g)
        flips = torch.randint(0, 2, (n,), device=dev, generator=g).bool()
        for i in range(steps):
            sl = slice(i * b, min((i + 1) * b, n))
            idx = perm[sl]
            x = crop_flip(self.images, idx, offsets[0, sl], offsets[1, sl], flips[sl], self.pad, self.refl)
            yield self.to_float(x), self.labels[idx]


class CIFAR10DataModule(LightningDataModule):
    """CIFAR-10 held on the training device; batches assembled there (no DataLoader workers).

    Args:
        data_path: a ``cifar-10-batches-py`` folder, an image-folder tree or a ``.tar.xz`` of one; when
            None, ``$CIFAR10_PATH`` or the first of ``DEFAULT_CANDIDATES`` that exists.
        batch_size: training batch size (the last partial batch of an epoch is dropped).
        eval_batch_size: batch size for validation/test (all images are scored).
        subset: use only this many training images (class-balanced: the first ones of each class).
        test_subset: likewise for the test images.
        val_split: hold out this many training images (seed 0, as the paper's split) for validation;
            0 means no validation loop.
        normalize: subtract the fixed CIFAR-10 mean and divide by its std. Leave False when BNInit's
            input BN normalises the input (values are then in [0, 1]).
        channels_last: hand the model channels-last batches.
        seed: base seed of the shuffling/augmentation; None takes ``torch.initial_seed()`` at setup,
            i.e. the seed given to ``seed_everything``, so runs paired by seed see identical batches.
        cache_dir: where decoded archives are cached (default: beside the archive if that folder is
            writable, else ``$LIGHTNING_BNINIT_CACHE`` or ``~/.cache/lightning_bninit``).
        device: where to keep the data; None = the trainer's root device (CPU without a trainer).
    """

    def __init__(
        self,
        data_path: Optional[str] = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        subset: Optional[int] = None,
        test_subset: Optional[int] = None,
        val_split: int = 0,
        normalize: bool = False,
        channels_last: bool = True,
        seed: Optional[int] = None,
        cache_dir: Optional[str] = None,
        device: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.data_path, self.cache_dir = data_path, cache_dir
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.subset, self.test_subset, self.val_split = subset, test_subset, val_split
        self.normalize, self.channels_last, self.seed, self.device = normalize, channels_last, seed, device
        self.classes: list[str] = []
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._train_batches: Optional[DeviceBatches] = None
        if val_split:  # only then is there a validation loop (Lightning checks for the override)
            self.val_dataloader = self._val_dataloader  # type: ignore[method-assign]

    @property
    def num_classes(self) -> int:
        return len(self.classes) or 10

    def _target_device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device
        return torch.device("cpu")

    def setup(self, stage: Optional[str] = None) -> None:
        if self._tensors:
            return
        arrays = load_cifar10(find_data_path(self.data_path), cache_dir=self.cache_dir)
        self.classes = list(arrays["classes"])
        nc = len(self.classes)
        x_tr, y_tr, x_te, y_te = arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
        x_val = y_val = None
        if self.val_split:
            perm = np.random.default_rng(0).permutation(len(y_tr))
            vi, ti = np.sort(perm[: self.val_split]), np.sort(perm[self.val_split:])
            x_val, y_val, x_tr, y_tr = x_tr[vi], y_tr[vi], x_tr[ti], y_tr[ti]
        if self.subset:
            keep = subset_indices(y_tr, self.subset, nc)
            x_tr, y_tr = x_tr[keep], y_tr[keep]
        if self.test_subset:
            keep = subset_indices(y_te, self.test_subset, nc)
            x_te, y_te = x_te[keep], y_te[keep]
        dev = self._target_device()

        def put(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.from_numpy(np.ascontiguousarray(x)).to(dev), torch.from_numpy(y).to(dev)

        self._tensors["train"] = put(x_tr, y_tr)
        self._tensors["test"] = put(x_te, y_te)
        if x_val is not None:
            self._tensors["val"] = put(x_val, y_val)
        if self.seed is None:
            self.seed = torch.initial_seed() % (2**62)

    def _batches(self, split: str, train: bool) -> DeviceBatches:
        x, y = self._tensors[split]
        norm = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD) if self.normalize else {}
        return DeviceBatches(
            x, y, self.batch_size if train else self.eval_batch_size, train=train, seed=int(self.seed or 0),
            channels_last=self.channels_last, **norm,
        )

    def train_dataloader(self) -> DeviceBatches:
        if self._train_batches is None:  # one object, so the epoch counter carries across epochs
            self._train_batches = self._batches("train", train=True)
        return self._train_batches

    def _val_dataloader(self) -> DeviceBatches:
        return self._batches("val", train=False)

    def test_dataloader(self) -> DeviceBatches:
        return self._batches("test", train=False)


def _main(argv: Optional[Sequence[str]] = None) -> None:
    """``python examples/cifar10/data.py [PATH]``: decode (or read the cache) once and print statistics."""
    import argparse
    import time

    ap = argparse.ArgumentParser(description="Decode CIFAR-10 once into the uint8 cache and print statistics.")
    ap.add_argument("path", nargs="?", default=None, help="data path (default: auto-detected)")
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args(argv)
    path = find_data_path(a.path)
    t0 = time.perf_counter()
    arrays = load_cifar10(path, cache_dir=a.cache_dir)
    dt = time.perf_counter() - t0
    x = arrays["x_train"].reshape(-1, 3)
    mean = x.mean(0) / 255
    std = np.sqrt((x.astype(np.float64) ** 2).mean(0) / 255**2 - mean**2)
    fmt = detect_format(path)
    key = _archive_key(path) if fmt == "archive" else (_folder_key(path) if fmt == "folder" else None)
    print(f"{path} ({fmt}): train {arrays['x_train'].shape}, test {arrays['x_test'].shape}, "
          f"classes {arrays['classes']}")
    print(f"train mean {np.round(mean, 4).tolist()} std {np.round(std, 4).tolist()}; loaded in {dt:.1f} s")
    if key is not None:
        print(f"cache: {_cache_path(path, key, a.cache_dir)}")


if __name__ == "__main__":
    _main()
