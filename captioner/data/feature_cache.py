"""The encoder feature cache: for a frozen backbone, every image's grid computed once and kept on disk.

Decoder-only training then reads (P, D) fp16 grids from a memory-mapped .npy file instead of
decoding images and running the CNN every epoch. The file name carries a key of everything that
determines the grids (backbone, a fingerprint of its weights, image size, grid, the image list and
the manifest's time stamp), so a changed setting builds a new cache; the file is written under a temporary name and
renamed when complete, so an interrupted build is simply redone.
"""

from __future__ import annotations

import hashlib
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
    """Where the grids of these records (of the data set in `root`) live: ROOT/cache/SPLIT-...-KEY.npy."""
    root = Path(root)
    enc = config.encoder
    manifest = root / "captions.json"
    stamp = manifest.stat().st_mtime_ns if manifest.exists() else 0
    key = f"{enc.backbone}|{weights_fingerprint(encoder)}|{config.data.image_size}|{enc.grid_size}|{stamp}|"
    key += "|".join(str(r.path) for r in records)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    size, grid = config.data.image_size, enc.grid_size
    return root / "cache" / f"{split}-{enc.backbone}-{size}px-{grid}x{grid}-{digest}.npy"


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
    """Compute (or reuse) the grids of `records`: a read-only memory-mapped array (N, P, D) of fp16."""
    expected = (len(records), encoder.grid_size**2, encoder.out_dim)
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape == expected:
            return cached
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = 2 * int(np.prod(expected))  # fp16
    free = shutil.disk_usage(path.parent).free
    if needed > free:
        raise DataError(
            f"the feature cache {path} needs {needed / 2**30:.1f} GiB and only {free / 2**30:.1f} GiB is free there: "
            f"free some space, or set data.cache_features=false to run the frozen CNN every step instead"
        )
    was_training = encoder.training
    encoder.eval()
    # Its own generator: building a cache must not move the global random stream that training uses.
    loader = DataLoader(
        ImageSet(records, transform),
        batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        generator=torch.Generator(),
    )
    try:
        with atomic_path(path) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=expected)
            for images, indices in tqdm(loader, desc=f"caching {path.name}", unit="batch", disable=None):
                grids = encoder.grid(images.to(device)).half()  # (B, P, D)
                _check_finite(grids, indices, path)
                array[indices[0] : indices[-1] + 1] = grids.cpu().numpy()
            array.flush()
            del array
    finally:
        encoder.train(was_training)
    return np.load(path, mmap_mode="r")


def _check_finite(grids: Tensor, indices: list[int], path: Path) -> None:
    """Refuse grids that fp16 cannot hold: training on them would only ever see a loss of nan."""
    bad = int((~torch.isfinite(grids)).sum())
    if bad:
        raise EncoderError(
            f"the encoder's grids of images {indices[0]}-{indices[-1]} for {path.name} hold {bad:,} values beyond "
            f"fp16's range (|x| > 65504), which the feature cache stores: nothing was cached; use pretrained "
            f"backbone weights (encoder.weights), or set data.cache_features=false to train from images"
        )


class CachedCaptionSet(Dataset):
    """CaptionTrainingSet with cached grids (P, D) in place of images."""

    def __init__(self, captions: CaptionTrainingSet, grids: np.ndarray):
        self.items, self.grids = captions.items, grids

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
        index = key[1] if isinstance(key, tuple) else key  # (epoch, index): a grid has nothing random to seed
        record_index, ids = self.items[index]
        return torch.from_numpy(np.asarray(self.grids[record_index], dtype=np.float32)), ids


class CachedImageSet(Dataset):
    """ImageSet with cached grids: (grid (P, D), record index)."""

    def __init__(self, grids: np.ndarray):
        self.grids = grids

    def __len__(self) -> int:
        return len(self.grids)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return torch.from_numpy(np.asarray(self.grids[index], dtype=np.float32)), index
