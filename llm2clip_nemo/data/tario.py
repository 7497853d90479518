"""Tar shard reading with exact positions and error markers instead of exceptions.

Why not `webdataset`'s tar iterator: resuming at an exact sample needs (a) a sample index that
counts *everything* the reader produced, errors included, so that a replay lands on the same item,
and (b) cheap skipping: on a local file `tarfile` in seek mode hops over member data without
reading it. Errors (truncated tails, unreadable members) become marker items that occupy a
position like a sample does, so counting them stays exact across a resume.
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

# `dir/abc.def.jpg` -> key `dir/abc`, ext `def.jpg` (the webdataset convention: first dot of basename).
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")

# Extensions that are pickles: never unpickled, only counted.
PICKLE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth"})
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class RawSample:
    """One sample's undecoded members, or an error marker (`error` set, `members` empty)."""

    key: str
    url: str
    index: int
    members: dict[str, bytes] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # reasons for members dropped while reading
    error: str | None = None


def split_name(name: str) -> tuple[str, str] | None:
    m = _KEY_EXT.match(name)
    return (m.group(1), m.group(2).lower()) if m else None


def is_local(url: str) -> bool:
    return not (url.startswith("pipe:") or "://" in url)


def _open_stream(url: str):
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, bufsize=1 << 20)
        return proc.stdout, proc
    url = url.removeprefix("file://")
    return open(url, "rb", buffering=1 << 20), None


def _clean_end(f, offset: int) -> bool:
    """A well-formed tar ends with at least one 512-byte zero block after the last member."""
    f.seek(offset)
    tail = f.read(512)
    return len(tail) == 512 and not tail.strip(b"\0")


def iter_tar_samples(url: str, start: int = 0, keys_only: bool = False, exclude: frozenset[str] = frozenset(),
                     rename: dict[str, str] | None = None) -> Iterator[RawSample]:
    """Yield the samples of one shard from item `start` on (items before it are skipped unread).

    Members of one sample are consecutive and share a key. Pickle members are dropped and noted in
    `skipped`. A truncated or unreadable tail ends the shard with one marker item
    (`error="truncated_tar"`); the incomplete sample in progress is dropped with it.
    exclude: sample keys to leave out (an energon `split.yaml` exclude list); each becomes a marker
    item (`error="excluded"`, data never read) so positions and resume stay exact.
    rename: member extension -> the name readers expect (an energon field map, see
    `data.energon.member_renames`); members mapped to None are dropped.
    """
    try:
        f, proc = _open_stream(url)
    except OSError as e:
        yield RawSample(key="", url=url, index=start, error=f"unreadable_shard: {e}")
        return
    seekable = proc is None
    index = 0
    cur: RawSample | None = None
    try:
        try:
            tf = tarfile.open(fileobj=f, mode="r:" if seekable else "r|")  # noqa: SIM115  f is closed below
        except tarfile.ReadError:
            if index >= start:
                yield RawSample(key="", url=url, index=index, error="truncated_tar")
            return
        while True:
            try:
                m = tf.next()
            except (tarfile.ReadError, EOFError, OSError):
                m, truncated = None, True
            else:
                truncated = m is None and seekable and not _clean_end(f, tf.offset)
            if m is None:
                if cur is not None and not truncated:
                    if cur.index >= start:
                        yield cur
                    index += 1
                if truncated and index >= start:
                    yield RawSample(key="", url=url, index=index, error="truncated_tar")
                return
            if not m.isfile():
                continue
            ke = split_name(m.name)
            if ke is None:
                continue
            key, ext = ke
            if cur is None or key != cur.key:
                if cur is not None:
                    if cur.index >= start:
                        yield cur
                    index += 1
                cur = RawSample(key=key, url=url, index=index)
                if key in exclude:
                    cur.error = "excluded"
            if cur.index < start or keys_only or cur.error is not None:
                continue  # skipping: seek mode never reads the data
            if rename is not None and ext in rename:
                ext = rename[ext]
                if ext is None:
                    continue
            if ext.rsplit(".", 1)[-1] in PICKLE_EXTS:
                cur.skipped.append("pickle_member")
                continue
            try:
                data = tf.extractfile(m).read()
            except (tarfile.ReadError, EOFError, OSError):
                yield RawSample(key="", url=url, index=index, error="truncated_tar")
                return
            cur.members[ext] = data
    finally:
        f.close()
        if proc is not None:
            proc.kill()
            proc.wait()


def count_samples(url: str) -> int:
    """Number of complete samples in a local shard (headers only: no member data is read)."""
    return sum(1 for s in iter_tar_samples(url, keys_only=True) if s.error is None)


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a member with fixed metadata so the same input gives byte-identical tars."""
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    tf.addfile(ti, io.BytesIO(data))


def atomic_tar(path: str):
    """Open `path + '.tmp'` for writing; `commit_tar` renames it into place."""
    tmp = path + ".tmp"
    return tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT)


def commit_tar(tmp: str, tf: tarfile.TarFile, path: str) -> None:
    tf.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
