"""Locations and the few object operations the job needs, on local paths and on S3.

A location is ``s3://bucket/key``, ``file:///abs/path`` or a plain path. S3 calls go through
boto3 so that any S3 endpoint works (``--endpoint-url`` or ``AWS_ENDPOINT_URL``) and so that
the credentials the worker uses are the ones the SDK resolves (task role, profile, env).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ecs_query.errors import InputError, OutputExistsError, TransientError, UserError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

logger = logging.getLogger(__name__)

_GLOB_CHARS = "*?["
_TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "503",
        "500",
    }
)


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its location and size in bytes."""

    uri: str
    size: int


@dataclass(frozen=True)
class Location:
    """A parsed location. For S3, ``path`` is the key; locally it is an absolute path."""

    scheme: str
    bucket: str
    path: str

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.is_s3 else self.path

    def child(self, name: str) -> Location:
        base = self.path.rstrip("/")
        joined = f"{base}/{name}" if base else name
        return Location(self.scheme, self.bucket, joined)


def parse_location(uri: str) -> Location:
    """Parse ``s3://bucket/key``, ``file:///path`` or a local path."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        if not bucket:
            raise UserError(f"{uri!r} has no bucket name; use s3://bucket/prefix")
        return Location("s3", bucket, key)
    path = uri[7:] if uri.startswith("file://") else uri
    return Location("file", "", str(Path(path).expanduser().absolute()))


def join(uri: str, *names: str) -> str:
    location = parse_location(uri)
    for name in names:
        location = location.child(name)
    return location.uri


class Store(Protocol):
    """The object operations the planner, worker and committer use."""

    def list(self, uri: str) -> list[ObjectInfo]: ...
    def read_bytes(self, uri: str) -> bytes: ...
    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None: ...
    def upload(self, local_path: str, uri: str) -> None: ...
    def download(self, uri: str, local_path: str) -> None: ...
    def move(self, source: str, target: str) -> None: ...
    def delete(self, uris: Iterable[str]) -> None: ...
    def exists(self, uri: str) -> bool: ...


class LocalStore:
    """Local files. Writes are atomic: a temporary file renamed into place."""

    def list(self, uri: str) -> list[ObjectInfo]:
        location = parse_location(uri)
        path = location.path
        if any(char in path for char in _GLOB_CHARS):
            root = _glob_root(path)
            pattern = path
        else:
            root, pattern = path, ""
        root_path = Path(root)
        if not root_path.exists():
            raise InputError(f"{uri!r} does not exist; check the path")
        if root_path.is_file():
            return [ObjectInfo(str(root_path), root_path.stat().st_size)]
        found = []
        for file in sorted(root_path.rglob("*")):
            if file.is_file() and (not pattern or fnmatch.fnmatchcase(str(file), pattern)):
                found.append(ObjectInfo(str(file), file.stat().st_size))
        return found

    def read_bytes(self, uri: str) -> bytes:
        return Path(parse_location(uri).path).read_bytes()

    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None:
        path = Path(parse_location(uri).path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        if if_absent:
            try:
                # A hard link fails if the target exists: an atomic create-if-absent.
                os.link(temporary, path)
            except FileExistsError:
                raise OutputExistsError(f"{path} already exists") from None
            finally:
                temporary.unlink()
        else:
            temporary.replace(path)

    def upload(self, local_path: str, uri: str) -> None:
        target = Path(parse_location(uri).path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(local_path, temporary)
        temporary.replace(target)

    def download(self, uri: str, local_path: str) -> None:
        shutil.copyfile(parse_location(uri).path, local_path)

    def move(self, source: str, target: str) -> None:
        target_path = Path(parse_location(target).path)
        target_path.parent.mkdir(parents=True, exist_ok=True)
        Path(parse_location(source).path).replace(target_path)

    def delete(self, uris: Iterable[str]) -> None:
        for uri in uris:
            Path(parse_location(uri).path).unlink(missing_ok=True)
        # Remove directories that the deletes left empty is the caller's choice; keep it simple.

    def exists(self, uri: str) -> bool:
        return Path(parse_location(uri).path).exists()


class S3Store:
    """S3 through boto3, with the SDK's adaptive retries for throttling."""

    def __init__(self, endpoint_url: str | None = None) -> None:
        self.endpoint_url = endpoint_url

    @cached_property
    def client(self) -> S3Client:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": 8, "mode": "adaptive"},
            max_pool_connections=32,
            s3={"addressing_style": "path"} if self.endpoint_url else {},
        )
        return boto3.client("s3", endpoint_url=self.endpoint_url, config=config)

    def list(self, uri: str) -> list[ObjectInfo]:
        location = parse_location(uri)
        key = location.path
        pattern = key if any(char in key for char in _GLOB_CHARS) else ""
        prefix = _glob_root(key) if pattern else key
        found: list[ObjectInfo] = []
        with _s3_errors(uri):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    object_key = item["Key"]
                    if object_key.endswith("/"):
                        continue
                    if pattern and not fnmatch.fnmatchcase(object_key, pattern):
                        continue
                    if not pattern and not _under_prefix(object_key, prefix):
                        continue
                    found.append(ObjectInfo(f"s3://{location.bucket}/{object_key}", item["Size"]))
        return found

    def read_bytes(self, uri: str) -> bytes:
        location = parse_location(uri)
        with _s3_errors(uri):
            response = self.client.get_object(Bucket=location.bucket, Key=location.path)
            return response["Body"].read()

    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None:
        location = parse_location(uri)
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            with _s3_errors(uri):
                self.client.put_object(
                    Bucket=location.bucket, Key=location.path, Body=data, **extra
                )
        except UserError as error:
            if if_absent and "PreconditionFailed" in str(error):
                raise OutputExistsError(f"{uri} already exists") from None
            raise

    def upload(self, local_path: str, uri: str) -> None:
        """Upload through a transfer manager, so SIGTERM can cancel it: a cancelled multipart
        upload is aborted, leaving no parts behind."""
        from s3transfer.manager import TransferManager

        location = parse_location(uri)
        with _s3_errors(uri), TransferManager(self.client) as manager:
            future = manager.upload(local_path, location.bucket, location.path)
            with _INFLIGHT_LOCK:
                _INFLIGHT.add(future)
            try:
                future.result()
            finally:
                with _INFLIGHT_LOCK:
                    _INFLIGHT.discard(future)

    def download(self, uri: str, local_path: str) -> None:
        location = parse_location(uri)
        with _s3_errors(uri):
            self.client.download_file(location.bucket, location.path, local_path)

    def move(self, source: str, target: str) -> None:
        src, dst = parse_location(source), parse_location(target)
        with _s3_errors(source):
            self.client.copy({"Bucket": src.bucket, "Key": src.path}, dst.bucket, dst.path)
            self.client.delete_object(Bucket=src.bucket, Key=src.path)

    def delete(self, uris: Iterable[str]) -> None:
        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            location = parse_location(uri)
            by_bucket.setdefault(location.bucket, []).append(location.path)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), 1000):
                batch: list[ObjectIdentifierTypeDef] = [
                    {"Key": key} for key in keys[start : start + 1000]
                ]
                with _s3_errors(f"s3://{bucket}/"):
                    self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch})

    def exists(self, uri: str) -> bool:
        location = parse_location(uri)
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=location.bucket, Key=location.path)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise _translate_client_error(uri, error) from error
        return True


_INFLIGHT: set[Any] = set()
_INFLIGHT_LOCK = threading.Lock()


def cancel_transfers() -> int:
    """Cancel every upload in flight in this process (called on SIGTERM); returns how many."""
    with _INFLIGHT_LOCK:
        futures = list(_INFLIGHT)
    for future in futures:
        future.cancel()
    return len(futures)


def store_for(uri: str, endpoint_url: str | None = None) -> Store:
    """The store that serves ``uri``."""
    if uri.startswith("s3://"):
        return _s3_store(endpoint_url)
    return LocalStore()


_S3_STORES: dict[str | None, S3Store] = {}


def _s3_store(endpoint_url: str | None) -> S3Store:
    store = _S3_STORES.get(endpoint_url)
    if store is None:
        store = _S3_STORES[endpoint_url] = S3Store(endpoint_url)
    return store


def move_many(store: Store, pairs: list[tuple[str, str]], *, threads: int = 16) -> None:
    """Move objects in parallel (server-side copies on S3, renames locally)."""
    if not pairs:
        return
    with ThreadPoolExecutor(max_workers=min(threads, len(pairs))) as pool:
        list(pool.map(lambda pair: store.move(*pair), pairs))


def _glob_root(path: str) -> str:
    """The longest leading part of ``path`` without glob characters, cut at a separator."""
    cut = min(path.index(char) for char in _GLOB_CHARS if char in path)
    return path[: path.rfind("/", 0, cut) + 1]


def _under_prefix(key: str, prefix: str) -> bool:
    """A prefix that does not end in '/' names a folder or an exact key, not a name start."""
    if not prefix or prefix.endswith("/") or key == prefix:
        return True
    return key.startswith(prefix + "/")


class _s3_errors:  # noqa: N801 - used as a context manager, reads like a statement
    """Translate botocore failures into the package's user and transient errors."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        if error is None:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(error, ClientError):
            raise _translate_client_error(self.uri, error) from error
        if isinstance(error, BotoCoreError):
            raise TransientError(f"S3 request for {self.uri} failed: {error}") from error


def _translate_client_error(uri: str, error: Any) -> Exception:
    info = error.response.get("Error", {})
    code = str(info.get("Code", ""))
    message = info.get("Message", "")
    if code in _TRANSIENT_S3_CODES:
        return TransientError(f"S3 is busy or failing for {uri} ({code}); retry later")
    if code == "NoSuchBucket":
        return InputError(f"bucket in {uri!r} does not exist; check the bucket name")
    if code in {"NoSuchKey", "404"}:
        return InputError(f"{uri!r} does not exist")
    if code in {"AccessDenied", "403", "AllAccessDisabled"}:
        return UserError(f"access denied to {uri!r}; grant the role access to this location")
    if code == "PreconditionFailed":
        return UserError(f"PreconditionFailed writing {uri!r}: {message}")
    return UserError(f"S3 error {code} for {uri!r}: {message}")
