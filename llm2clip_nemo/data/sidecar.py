"""Embedding sidecars: one tar per image shard holding the teacher's caption embeddings.

Layout of `shard-000000.emb.tar` (beside `shard-000000.tar`, or in a parallel directory):
  `__meta__.json`  first member: {"format", "fingerprint", "dim", "pooling", "fields", "dtype", "image_shard"}
  `{key}.emb`      one record per image-shard key, fields in `fields` order:
                   fp16 / bf16: [n_fields, dim] 2-byte values;
                   int8: [n_fields] float32 scales, then [n_fields, dim] int8 (vector = q * scale).
Records have a fixed size, so the reader indexes the tar by its headers and seeks per key.
Embeddings from another teacher (fingerprint), of another size or for other caption fields are
refused with `SidecarMismatchError`, never mixed in silently.
"""
from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .errors import data_field
from .tario import add_member, atomic_tar, commit_tar

FORMAT = "llm2clip-sidecar/1"
DTYPES = ("fp16", "bf16", "int8")
META_NAME = "__meta__.json"


class SidecarMismatchError(ValueError):
    """A sidecar does not belong to the expected teacher, fields or image shard."""


@dataclass
class SidecarMeta:
    fingerprint: str
    """Opaque teacher identity computed by the teacher code (weights + pooling + prompt...)."""
    dim: int
    """Embedding size."""
    fields: list[str]
    """Caption fields embedded, in record order (e.g. ["txt", "long"])."""
    pooling: str = "mean"
    """How token states were pooled (recorded for humans and for the mismatch check)."""
    dtype: str = "fp16"
    """Storage dtype: fp16, bf16 or int8 (per-vector scale)."""
    image_shard: str = ""
    """Basename of the image shard this sidecar belongs to."""
    contract: dict | None = None
    """The teacher contract the vectors were made with (`formats.contract.TeacherContract` fields, for
    humans; the fingerprint already covers it)."""
    format: str = FORMAT

    def record_bytes(self) -> int:
        n, d = len(self.fields), self.dim
        return n * 4 + n * d if self.dtype == "int8" else n * d * 2


def sidecar_path(shard_url: str, sidecar_dir: str | None = None) -> str:
    """`dir/shard-000001.tar` -> `dir/shard-000001.emb.tar` (or the same name in `sidecar_dir`)."""
    base = os.path.basename(shard_url)
    stem = base.removesuffix(".tar")
    name = stem + ".emb.tar"
    return os.path.join(sidecar_dir, name) if sidecar_dir else os.path.join(os.path.dirname(shard_url), name)


def encode_vectors(x: np.ndarray | torch.Tensor, dtype: str) -> bytes:
    t = torch.as_tensor(x).detach().float().cpu()
    if t.dim() != 2:
        raise ValueError(f"sidecar vectors must be [n_fields, dim], got shape {tuple(t.shape)}")
    if dtype == "fp16":
        return t.half().numpy().tobytes()
    if dtype == "bf16":
        return t.bfloat16().view(torch.int16).numpy().tobytes()
    if dtype == "int8":
        scale = t.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        q = torch.round(t / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return scale.numpy().astype("<f4").tobytes() + q.numpy().tobytes()
    raise ValueError(f"sidecar dtype {dtype!r} is not one of {DTYPES}")


def decode_vectors(b: bytes, meta: SidecarMeta) -> torch.Tensor:
    """Record bytes -> float32 [n_fields, dim]."""
    n, d = len(meta.fields), meta.dim
    if len(b) != meta.record_bytes():
        raise SidecarMismatchError(f"sidecar record of {len(b)} bytes, expected {meta.record_bytes()} for {n}x{d} {meta.dtype}")
    if meta.dtype == "fp16":
        return torch.from_numpy(np.frombuffer(b, dtype="<f2").reshape(n, d).astype(np.float32))
    if meta.dtype == "bf16":
        return torch.from_numpy(np.frombuffer(b, dtype="<i2").reshape(n, d).copy()).view(torch.bfloat16).float()
    scale = np.frombuffer(b[: 4 * n], dtype="<f4")
    q = np.frombuffer(b[4 * n :], dtype=np.int8).reshape(n, d)
    return torch.from_numpy(q.astype(np.float32) * scale[:, None])


class SidecarWriter:
    """Write one sidecar atomically (tmp file, renamed on a clean close; removed on error).

        with SidecarWriter(sidecar_path(shard), SidecarMeta(fp, 576, ["txt", "long"], dtype="int8")) as w:
            w.write(key, vectors)        # vectors: [len(fields), dim]
    """

    def __init__(self, path: str, meta: SidecarMeta):
        if meta.dtype not in DTYPES:
            raise ValueError(f"SidecarMeta.dtype={meta.dtype!r} is not one of {DTYPES}")
        if not meta.fields or meta.dim <= 0:
            raise ValueError(f"SidecarMeta needs fields and dim > 0, got fields={meta.fields} dim={meta.dim}")
        self.path, self.meta = path, meta
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._tmp, self._tf = atomic_tar(path)
        add_member(self._tf, META_NAME, json.dumps(asdict(meta), sort_keys=True).encode())
        self._keys: set[str] = set()

    def write(self, key: str, vectors) -> None:
        if key in self._keys:
            raise ValueError(f"sidecar {self.path}: key {key!r} written twice")
        shape = tuple(torch.as_tensor(vectors).shape)
        if shape != (len(self.meta.fields), self.meta.dim):
            raise ValueError(f"sidecar {self.path}: key {key!r} vectors have shape {shape}, expected "
                             f"({len(self.meta.fields)}, {self.meta.dim}) = (fields, dim)")
        self._keys.add(key)
        add_member(self._tf, f"{key}.emb", encode_vectors(vectors, self.meta.dtype))

    def close(self) -> None:
        commit_tar(self._tmp, self._tf, self.path)

    def abort(self) -> None:
        self._tf.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.abort() if exc_type else self.close()


def check_meta(meta: SidecarMeta, path: str, fingerprint: str | None = None, dim: int | None = None,
               fields: list[str] | None = None, pooling: str | None = None,
               named: Callable[[str], str] = data_field) -> None:
    """Refuse a sidecar that is not what the run expects (each mismatch names the fix; `named`: a stream
    field's name as the user types it, `spec.parse_sources`)."""
    fix = (f"re-run `llm2clip-nemo extract` for these shards with the current teacher, or point "
           f"{named('sidecar_dir')} at matching sidecars")
    if fingerprint is not None and meta.fingerprint != fingerprint:
        raise SidecarMismatchError(
            f"sidecar {path} has teacher fingerprint {meta.fingerprint!r}, expected {fingerprint!r}: "
            f"it holds another teacher's embeddings; {fix}"
        )
    if dim is not None and meta.dim != dim:
        raise SidecarMismatchError(f"sidecar {path} has dim {meta.dim}, expected {dim}; {fix}")
    if fields is not None:
        missing = [f for f in fields if f not in meta.fields]
        if missing:
            raise SidecarMismatchError(
                f"sidecar {path} has caption fields {meta.fields}, missing {missing} needed by {named('caption_fields')}; {fix}"
            )
    if pooling is not None and meta.pooling != pooling:
        raise SidecarMismatchError(f"sidecar {path} has pooling {meta.pooling!r}, expected {pooling!r}; {fix}")


class SidecarReader:
    """Random access to one sidecar: `meta`, `keys()`, `get(key) -> [n_fields, dim]`, `vector(key, field)`."""

    def __init__(self, path: str, fingerprint: str | None = None, dim: int | None = None,
                 fields: list[str] | None = None, pooling: str | None = None,
                 named: Callable[[str], str] = data_field):
        self.path = path
        try:
            self._f = open(path, "rb")  # noqa: SIM115  kept open for seeks; closed in close()
        except OSError as e:
            raise SidecarMismatchError(
                f"sidecar {path} cannot be opened ({e.strerror}); write it with `llm2clip-nemo extract` or set "
                f"{named('sidecar_dir')} to where the .emb.tar files are"
            ) from None
        index: dict[str, tuple[int, int]] = {}
        meta = None
        with tarfile.open(fileobj=self._f, mode="r:") as tf:
            for m in tf:
                if m.name == META_NAME:
                    meta = SidecarMeta(**json.loads(tf.extractfile(m).read()))
                elif m.name.endswith(".emb"):
                    index[m.name[:-4]] = (m.offset_data, m.size)
        if meta is None or meta.format != FORMAT:
            raise SidecarMismatchError(f"{path} is not an llm2clip sidecar (no {META_NAME} of format {FORMAT})")
        self.meta, self._index = meta, index
        self._field_idx = {f: i for i, f in enumerate(meta.fields)}
        check_meta(meta, path, fingerprint, dim, fields, pooling, named)

    def keys(self) -> list[str]:
        return list(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: str) -> torch.Tensor:
        try:
            off, size = self._index[key]
        except KeyError:
            raise SidecarMismatchError(
                f"sidecar {self.path} has no embedding for key {key!r} of image shard {self.meta.image_shard!r}: "
                f"shard and sidecar disagree; re-run `llm2clip-nemo extract` for this shard"
            ) from None
        self._f.seek(off)
        return decode_vectors(self._f.read(size), self.meta)

    def vector(self, key: str, field_name: str) -> torch.Tensor:
        return self.get(key)[self._field_idx[field_name]]

    def close(self) -> None:
        self._f.close()

    def __getstate__(self):
        raise TypeError("SidecarReader holds an open file; open it inside the worker instead")
