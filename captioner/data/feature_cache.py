"""The encoder feature cache: for a frozen backbone, every image's grid computed once and kept on disk.

Decoder-only training then reads (P, D) fp16 grids from a .npy file instead of decoding images and running
the CNN every epoch, row by row with pread and pwrite (GridFile): the rows pass through the page cache but
never count in the process's memory, as a memory map's pages do (12 GiB for 100,000 pictures at 7 x 7 x 1280).
The file name carries a key of everything that determines the grids but the images' content (backbone, a
fingerprint of its weights, image size, grid, the image list by paths relative to the data set, so that a
relative and an absolute spelling of it share one cache). Beside it, FILE.stamps holds each image file's size
and modification time (ns) as they were when its grid was computed: an image replaced since has its grid
computed again, in place, and only its. The file is written under a temporary name and renamed when complete,
so an interrupted build is simply redone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captioner.config import Config
from captioner.data.images import ImageTransform
from captioner.data.manifest import CaptionTrainingSet, ImageRecord, ImageSet, collate_images
from captioner.errors import DataError, EncoderError
from captioner.files import atomic_path


def weights_fingerprint(encoder: nn.Module) -> str:
    """A short hash of the trunk's weights, so two differently initialised backbones never share a cache."""
    digest = hashlib.sha1()
    for name, tensor in encoder.trunk.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().flatten()[:256].cpu().float().numpy().tobytes())
    return digest.hexdigest()[:12]


def cache_file(root: str | Path, config: Config, records: list[ImageRecord], split: str, encoder: nn.Module) -> Path:
    """Where the grids of these records (of the data set in `root`) live: ROOT/cache/SPLIT-...-KEY.npy.

    The records are keyed by their paths relative to root (how the manifest names them), so the key does not
    depend on how root is spelled, nor on captions.json being written again."""
    root = Path(root)
    enc = config.encoder
    key = f"{enc.backbone}|{weights_fingerprint(encoder)}|{config.data.image_size}|{enc.grid_size}|"
    key += "|".join(relative_names(records, root))
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    size, grid = config.data.image_size, enc.grid_size
    return root / "cache" / f"{split}-{enc.backbone}-{size}px-{grid}x{grid}-{digest}.npy"


def relative_names(records: list[ImageRecord], root: Path) -> list[str]:
    """Each record's path relative to root where it lies under root, else absolute; lexical (symbolic links are
    not followed), and the same whether root and the paths are spelled relative or absolute."""
    cwd = os.getcwd()
    base = os.path.normpath(os.path.join(cwd, root)) + os.sep
    names = []
    for record in records:
        path = os.path.normpath(os.path.join(cwd, record.path))  # an absolute record.path ignores cwd
        names.append(path[len(base) :] if path.startswith(base) else path)
    return names


def stamps_file(path: Path) -> Path:
    """The stamps of a cache file's rows: PATH.stamps (not .npy, so that no glob for caches finds it)."""
    return path.with_name(path.name + ".stamps")


def image_stamps(records: list[ImageRecord]) -> np.ndarray:
    """(N, 2) int64: every record's file size and modification time in ns (one stat each, no reading)."""
    stamps = np.empty((len(records), 2), dtype=np.int64)
    for i, record in enumerate(records):
        try:
            stat = os.stat(record.path)
        except OSError as error:
            raise DataError(f"{record.path}: cannot read the image ({error.strerror})") from None
        stamps[i] = stat.st_size, stat.st_mtime_ns
    return stamps


def _read_stamps(path: Path, count: int) -> np.ndarray:
    """The stamps a cache was built with; -1 (matching no file) for every row where they are missing or unreadable."""
    try:
        stamps = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        stamps = None
    if stamps is None or stamps.shape != (count, 2) or stamps.dtype != np.int64:
        return np.full((count, 2), -1, dtype=np.int64)
    return stamps


def _write_stamps(path: Path, stamps: np.ndarray) -> None:
    with atomic_path(stamps_file(path)) as tmp, open(tmp, "wb") as file:
        np.save(file, stamps, allow_pickle=False)


@torch.no_grad()
def build_feature_cache(
    encoder: nn.Module,
    records: list[ImageRecord],
    transform: ImageTransform,
    path: Path,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
) -> np.ndarray:
    """Compute (or reuse) the grids of `records`: a GridFile of (N, P, D) fp16 rows.

    A cache that is there is reused, but the grids of the images whose size or modification time changed
    since they were computed are computed again first."""
    expected = (len(records), encoder.grid_size**2, encoder.out_dim)
    stamps = image_stamps(records)  # before any image is read: a file changed during the build is stale next time
    if path.is_file():
        cached = GridFile.open(path)
        if cached is not None and cached.shape == expected:
            stale = np.flatnonzero((_read_stamps(stamps_file(path), len(records)) != stamps).any(axis=1))
            if len(stale):
                rows = GridFile(path, writable=True)
                _compute(encoder, records, stale, transform, rows, path, device, batch_size, num_workers)
                rows.close()
                _write_stamps(path, stamps)  # after the grids: stamps never vouch for a row not yet written
            return cached
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = 2 * int(np.prod(expected))  # fp16
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise DataError(
            f"the feature cache {path} needs {needed / 2**30:.1f} GiB and only {free / 2**30:.1f} GiB is free there: "
            f"free some space, or set data.cache_features=false to run the frozen CNN every step instead"
        )
    with atomic_path(path) as tmp:
        rows = GridFile.create(tmp, expected)
        _compute(encoder, records, np.arange(len(records)), transform, rows, path, device, batch_size, num_workers)
        rows.close()
        _write_stamps(path, stamps)  # before the rename: a cache file is never there without its stamps
    return GridFile(path)


class GridFile:
    """The rows of a .npy file of fp16 (N, P, D), read (grids[i] -> (P, D)) and written (grids[rows] = values) in
    place with pread and pwrite. The data pass through the page cache, shared by every process and given back
    by the kernel when memory is short, never through this process's own memory as a memory map's pages would
    (its resident size grows by every row read or written). Pickled (DataLoader workers) it opens the file anew."""

    dtype = np.dtype(np.float16)

    def __init__(self, path: str | Path, writable: bool = False):
        self.path, self.writable, self.fd = Path(path), writable, -1
        with open(self.path, "rb") as file:
            read_header = np.lib.format.read_array_header_1_0
            if np.lib.format.read_magic(file) != (1, 0):
                read_header = np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(file)
            self.offset = file.tell()
        if dtype != np.float16 or fortran or len(shape) != 3:
            raise ValueError(f"{self.path} does not hold fp16 rows (N, P, D) in C order")
        self.shape: tuple[int, int, int] = tuple(shape)
        self.row_bytes = 2 * shape[1] * shape[2]
        if self.path.stat().st_size != self.offset + shape[0] * self.row_bytes:
            raise ValueError(f"{self.path} is not as long as its header says (cut off?)")
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    @classmethod
    def create(cls, path: str | Path, shape: tuple[int, ...]) -> GridFile:
        """A new file of that shape (its rows zero until written: a sparse file), open for writing."""
        header = {"descr": np.lib.format.dtype_to_descr(cls.dtype), "fortran_order": False, "shape": tuple(shape)}
        with open(path, "wb") as file:
            np.lib.format.write_array_header_1_0(file, header)
            file.truncate(file.tell() + 2 * int(np.prod(shape)))
        return cls(path, writable=True)

    @classmethod
    def open(cls, path: Path) -> GridFile | None:
        """The file at path, or None where it is no cache file (damaged, or another layout): built again then."""
        try:
            return cls(path)
        except (OSError, ValueError):
            return None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"row {index} of {self.shape[0]} in {self.path}")
        data = os.pread(self.fd, self.row_bytes, self.offset + int(index) * self.row_bytes)
        if len(data) != self.row_bytes:
            raise DataError(f"the feature cache {self.path} is cut off at row {index}: delete it to build it again")
        return np.frombuffer(data, dtype=np.float16).reshape(self.shape[1:])

    def __setitem__(self, rows: np.ndarray, values: np.ndarray) -> None:
        rows = np.asarray(rows).tolist()
        values = np.ascontiguousarray(values, dtype=np.float16)
        if values.shape != (len(rows), *self.shape[1:]):
            raise ValueError(f"rows of {values.shape} do not fit {self.path}'s {self.shape}")
        for row, value in zip(rows, values, strict=True):
            if os.pwrite(self.fd, value.tobytes(), self.offset + row * self.row_bytes) != self.row_bytes:
                raise DataError(f"could not write row {row} of the feature cache {self.path} whole (disk full?)")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every row at once (tests and small sets)."""
        array = np.stack([self[i] for i in range(len(self))]) if len(self) else np.zeros(self.shape, np.float16)
        return array if dtype is None else array.astype(dtype)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"path": self.path, "writable": self.writable}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["writable"])


def _compute(
    encoder: nn.Module,
    records: list[ImageRecord],
    rows: np.ndarray,
    transform: ImageTransform,
    array: np.ndarray,
    path: Path,
    device: torch.device,
    batch_size: int,
    num_workers: int,
) -> None:
    """Write the grids of records[rows] into array[rows], the encoder in eval mode meanwhile."""
    was_training = encoder.training
    encoder.eval()
    # Its own generator: building a cache must not move the global random stream that training uses.
    loader = DataLoader(
        ImageSet([records[i] for i in rows], transform),
        batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        generator=torch.Generator(),
    )
    try:
        for images, indices in tqdm(loader, desc=f"caching {path.name}", unit="batch", disable=None):
            grids = encoder.grid(images.to(device)).half()  # (B, P, D)
            batch_rows = rows[indices]
            _check_finite(grids, batch_rows, path)
            array[batch_rows] = grids.cpu().numpy()
    finally:
        encoder.train(was_training)


def _check_finite(grids: Tensor, rows: np.ndarray, path: Path) -> None:
    """Refuse grids that fp16 cannot hold: training on them would only ever see a loss of nan."""
    bad = int((~torch.isfinite(grids)).sum())
    if bad:
        raise EncoderError(
            f"the encoder's grids of images {rows[0]}-{rows[-1]} for {path.name} hold {bad:,} values beyond "
            f"fp16's range (|x| > 65504), which the feature cache stores: they were not cached; use pretrained "
            f"backbone weights (encoder.weights), or set data.cache_features=false to train from images"
        )


def _grid(grids, index: int) -> Tensor:
    """A cached grid (P, D) as an fp16 tensor of its own: the model's encoder makes it float32 (on the GPU, after
    a copy of half the bytes), in one vectorised pass over the batch, not NumPy grid by grid (docs/speed.md)."""
    return torch.from_numpy(np.array(grids[index], dtype=np.float16))


class CachedCaptionSet(Dataset):
    """CaptionTrainingSet with cached grids (P, D, fp16) in place of images."""

    def __init__(self, captions: CaptionTrainingSet, grids: np.ndarray):
        self.items, self.grids = captions.items, grids

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        index = key[1] if isinstance(key, tuple) else key  # (epoch, index): a grid has nothing random to seed
        record_index, ids = self.items[index]
        return _grid(self.grids, record_index), ids


class CachedImageSet(Dataset):
    """ImageSet with cached grids: (grid (P, D), fp16, record index)."""

    def __init__(self, grids: np.ndarray):
        self.grids = grids

    def __len__(self) -> int:
        return len(self.grids)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return _grid(self.grids, index), index
