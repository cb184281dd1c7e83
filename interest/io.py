"""Paths on local disk or ``s3://``, file discovery, and atomic publication of outputs.

S3 goes through s3fs, which honours the usual ``AWS_*`` credential variables; we pass
``AWS_ENDPOINT_URL`` explicitly so any S3-compatible store (MinIO, moto, Ceph) works.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import posixpath
import shutil
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

_HIDDEN = ("_", ".")


class InputError(ValueError):
    """An input path, file or format is unusable; the message names it."""


class StorageError(OSError):
    """A store could not be reached, or failed a request, once its client's retries
    were spent; the message names the bucket and what was being done."""


def _bucket(path: str) -> str:
    return str(path).split("://", 1)[1].split("/", 1)[0]


@contextlib.contextmanager
def storage_errors(path: str, doing: str):
    """Turn a failure of the S3 store under ``path`` inside the block into one
    :class:`StorageError`: which bucket, at which endpoint, doing what, after how long.

    The clients retry first: botocore each request with exponential backoff (its
    default, 5 attempts), s3fs its retryable errors again (5 times, backing off), about
    half a minute against an unreachable endpoint. Local paths' errors pass unchanged."""
    start = time.monotonic()
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # botocore's errors are not OSErrors: told apart by their module
        module = type(exc).__module__.split(".")[0]
        if not is_s3(path) or not (isinstance(exc, OSError) or module in ("botocore", "aiobotocore", "aiohttp")):
            raise
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        raise StorageError(f"{doing}: S3 bucket {_bucket(path)!r} ({endpoint}) failed after "
                           f"{time.monotonic() - start:.0f} s of retries: {exc}") from exc


def is_s3(path: str) -> bool:
    return str(path).startswith(("s3://", "s3a://"))


def s3fs_filesystem():
    import s3fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    # No listings cache: other processes rewrite the same keys (a Ray worker that listed a
    # staging folder in one preparation read the next one's files with the old ETags,
    # and s3fs failed with FileExpired).
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {},
                             use_listings_cache=False)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The Arrow filesystem for ``path`` and the path inside it (Ray Data takes both)."""
    path = str(path)
    if is_s3(path):
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(s3fs_filesystem()))
        return fs, path.split("://", 1)[1]
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def expand(path: str, extensions: tuple[str, ...] | None = None) -> list[str]:
    """Files named by ``path``: a file, a folder (recursively) or a glob, sorted.

    Files whose name starts with ``_`` or ``.`` (markers, hidden files) are skipped
    inside folders. Paths come back in the filesystem's own form (no ``s3://``).
    """
    fs, inner = filesystem(path)
    if _has_glob(inner):
        root = inner
        while _has_glob(root):
            root = posixpath.dirname(root) if is_s3(path) else os.path.dirname(root)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        files = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, inner)]
        if not files:
            raise InputError(f"no files match {path}")
        return sorted(files)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"input not found: {path}")
    if info.type == pafs.FileType.File:
        return [inner]
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    files = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and not any(part.startswith(_HIDDEN) for part in os.path.relpath(i.path, inner).split(os.sep))
        and (extensions is None or i.path.lower().endswith(extensions))
    ]
    if not files:
        wanted = f" with extension {'/'.join(extensions)}" if extensions else ""
        raise InputError(f"no input files{wanted} in folder {path}")
    return sorted(files)


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def children(path: str, *, folders: bool = False) -> list[str]:
    """Names of the files and folders (only the folders: ``folders``) directly in the
    folder ``path``, sorted; [] when it is absent."""
    fs, inner = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos
                  if not folders or i.type == pafs.FileType.Directory)


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def makedirs(path: str) -> None:
    fs, inner = filesystem(path)
    fs.create_dir(inner, recursive=True)


def remove(path: str) -> None:
    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(inner)
    elif info.type == pafs.FileType.File:
        fs.delete_file(inner)


def copy_tree(src: str, dst: str) -> None:
    """Copy the folder ``src`` to ``dst`` (on S3, object by object, server-side)."""
    fs, inner_src = filesystem(src)
    _, inner_dst = filesystem(dst)
    for info in fs.get_file_info(pafs.FileSelector(inner_src, recursive=True)):
        if info.type == pafs.FileType.File:
            target = inner_dst + info.path[len(inner_src.rstrip("/")):]
            fs.create_dir(posixpath.dirname(target) if is_s3(dst) else os.path.dirname(target), recursive=True)
            fs.copy_file(info.path, target)


def write_parquet(table: pa.Table, path: str, **kwargs) -> None:
    fs, inner = filesystem(path)
    fs.create_dir(posixpath.dirname(inner) if is_s3(path) else os.path.dirname(inner), recursive=True)
    pq.write_table(table, inner, filesystem=fs, **kwargs)


def write_arrow(table: pa.Table, path: str) -> None:
    """An Arrow IPC file (LZ4): for temporary, internal data, ~6x faster to write than Parquet."""
    fs, inner = filesystem(path)
    fs.create_dir(posixpath.dirname(inner) if is_s3(path) else os.path.dirname(inner), recursive=True)
    with fs.open_output_stream(inner) as sink, pa.ipc.new_file(
            sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(table)


def read_arrow(path: str, columns: list[str] | None = None) -> pa.Table:
    """Every Arrow IPC file under the folder ``path``, concatenated."""
    import pyarrow.dataset as pads

    fs, inner = filesystem(path)
    return pads.dataset(inner, format="arrow", filesystem=fs).to_table(columns=columns)


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file or a folder of them (small tables: vocabularies, reports)."""
    fs, inner = filesystem(path)
    return pq.read_table(inner, filesystem=fs, columns=columns)


def count_rows(path: str) -> int:
    """Rows of the Parquet files under ``path`` (0 if absent), from their footers only."""
    import pyarrow.dataset as pads

    if not exists(path):
        return 0
    fs, inner = filesystem(path)
    return pads.dataset(inner, filesystem=fs, format="parquet").count_rows()


def write_bytes(data: bytes, path: str) -> None:
    fs, inner = filesystem(path)
    fs.create_dir(posixpath.dirname(inner) if is_s3(path) else os.path.dirname(inner), recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(data)


def write_json(obj: Any, path: str) -> None:
    write_bytes((json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode(), path)


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode())


SUCCESS = "_SUCCESS"


def check_writable(final: str, *, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked to."""
    final = str(final).rstrip("/")
    taken = exists(join(final, SUCCESS)) or (not is_s3(final) and os.path.isdir(final) and os.listdir(final))
    if taken and not overwrite:
        raise InputError(f"output {final} already exists; pass --overwrite to replace it")


class Publication:
    """Write a folder of outputs so readers see all of it or none of it.

    Locally, outputs go to a hidden sibling folder renamed into place at the end
    (one atomic ``rename``; an older version is moved aside first and deleted
    after). S3 has no rename, so there outputs are written in place and a
    ``_SUCCESS`` marker, written last, is what readers check (:func:`is_complete`).
    """

    def __init__(self, final: str, *, overwrite: bool = False):
        self.final = str(final).rstrip("/")
        check_writable(self.final, overwrite=overwrite)
        if is_s3(self.final):
            if exists(self.final):
                remove(self.final)
            self.path = self.final
        else:
            parent = os.path.dirname(os.path.abspath(self.final))
            os.makedirs(parent, exist_ok=True)
            self.path = os.path.join(parent, f".{os.path.basename(self.final)}.tmp-{uuid.uuid4().hex[:8]}")
        makedirs(self.path)

    def commit(self) -> str:
        write_json({"complete": True}, join(self.path, SUCCESS))
        if self.path != self.final:
            old = None
            if os.path.exists(self.final):
                old = self.path + ".old"
                os.replace(self.final, old)
            os.replace(self.path, self.final)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        if self.path != self.final:
            shutil.rmtree(self.path, ignore_errors=True)


def is_complete(path: str) -> bool:
    return exists(join(path, SUCCESS))
