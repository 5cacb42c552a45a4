"""Where a run directory or an input lives: a local path, or a URL on any filesystem pyarrow.fs reaches
(`s3://`, `gs://`, `hdfs://`; others through fsspec). `open_store` maps a URL to a filesystem and a root and
checks that it answers; `Store` offers the few operations the run's working copy needs (curate/mirror.py).
Endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)
or the `storage:` config section; none of them is ever logged."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Union
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, SecretStr

from curate.stage import ConfigError

SECRET_KEYS = ("access_key_id", "secret_access_key")  # never written to config.resolved.yaml
CHUNK = 8 << 20


class StorageConfig(BaseModel):
    """How to reach an object store; every key is optional (the environment's settings apply)."""

    model_config = ConfigDict(extra="forbid")
    endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://127.0.0.1:9000 "
                                                       "(default: AWS_ENDPOINT_URL, else AWS)")
    region: str | None = Field(None, description="S3 region (default: AWS_REGION / AWS_DEFAULT_REGION)")
    access_key_id: SecretStr | None = Field(None, description="default: AWS_ACCESS_KEY_ID or the profile's")
    secret_access_key: SecretStr | None = Field(None, description="default: AWS_SECRET_ACCESS_KEY or the profile's")
    cache_dir: Path | None = Field(None, description="local working copies of remote runs and inputs "
                                                     "(default: CURATE_CACHE_DIR, else ~/.cache/curate)")
    connect_timeout_s: float = Field(5.0, gt=0, description="a store that does not answer fails this fast")


class StorageError(ConfigError):
    """A store that cannot be reached or used; the message names the setting to change."""


def is_url(location) -> bool:
    """True for `scheme://...` other than `file://` (a local path then)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path(location) -> Path:
    """A local location as a Path (`file://` stripped)."""
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def _location(value) -> Path | str:
    text = str(value)
    return text.rstrip("/") if is_url(text) else local_path(text)


# A config value naming a file or folder: a URL stays a string, a local path becomes a Path.
Location = Annotated[Union[Path, str], PlainValidator(_location), PlainSerializer(str)]


def cache_root(cfg: StorageConfig | None) -> Path:
    if cfg and cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("CURATE_CACHE_DIR") or Path.home() / ".cache" / "curate")


def _env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _s3(cfg: StorageConfig) -> tuple[pafs.FileSystem, str]:
    """An S3 filesystem from the config, else the environment; returns it and which setting named the endpoint."""
    endpoint = cfg.endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    setting = "storage.endpoint_url" if cfg.endpoint_url else "AWS_ENDPOINT_URL" if endpoint else "the AWS endpoint"
    kwargs: dict = {"connect_timeout": cfg.connect_timeout_s, "request_timeout": 4 * cfg.connect_timeout_s,
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2)}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(scheme=parsed.scheme, endpoint_override=parsed.netloc)
    region = cfg.region or _env("AWS_REGION", "AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if cfg.access_key_id and cfg.secret_access_key:
        kwargs.update(access_key=cfg.access_key_id.get_secret_value(),
                      secret_key=cfg.secret_access_key.get_secret_value())
    elif cfg.access_key_id or cfg.secret_access_key:
        raise StorageError("storage.access_key_id and storage.secret_access_key go together: set both or neither")
    return pafs.S3FileSystem(**kwargs), setting


def _filesystem(url: str, cfg: StorageConfig) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, root path inside it, the setting that says where it is) for a URL."""
    scheme = urlparse(url).scheme
    if scheme in ("s3", "s3a"):
        fs, setting = _s3(cfg)
        return fs, url.split("://", 1)[1].rstrip("/"), setting
    if scheme in ("gs", "gcs"):  # credentials: GOOGLE_APPLICATION_CREDENTIALS or the VM's; retries bounded
        fs = pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=cfg.connect_timeout_s))
        return fs, url.split("://", 1)[1].rstrip("/"), "--out"
    try:
        fs, root = pafs.FileSystem.from_uri(url)
        return fs, root.rstrip("/"), "--out"
    except (ValueError, NotImplementedError, OSError):  # a scheme this Arrow does not know or lacks: fsspec may
        pass
    try:
        import fsspec

        ffs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise StorageError(f"{url}: no filesystem for the scheme {scheme!r} ({err}); use s3://, gs://, "
                           "hdfs:// or a scheme of an installed fsspec package") from err
    return pafs.PyFileSystem(pafs.FSSpecHandler(ffs)), root.rstrip("/"), url


@dataclass
class Store:
    """A folder on a filesystem; paths inside it are `/`-separated names relative to its root."""

    url: str
    fs: pafs.FileSystem
    root: str

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def listing(self, rel: str = "") -> dict[str, tuple[int, float]]:
        """name -> (size, mtime) of every file under `rel`."""
        selector = pafs.FileSelector(self.path(rel), recursive=True, allow_not_found=True)
        prefix = len(self.root) + 1
        return {info.path[prefix:]: (info.size, info.mtime.timestamp() if info.mtime else 0.0)
                for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File}

    def stat(self, rel: str) -> tuple[int, float] | None:
        """(size, mtime) of a file, None when there is none."""
        info = self.fs.get_file_info(self.path(rel))
        if info.type != pafs.FileType.File:
            return None
        return info.size, info.mtime.timestamp() if info.mtime else 0.0

    def exists(self, rel: str) -> bool:
        return self.stat(rel) is not None

    def put(self, local: Path, rel: str) -> None:
        """Upload a file. On an object store the object appears whole on close, or not at all; on a local or
        mounted filesystem it is written to a temp name and renamed."""
        direct = not isinstance(self.fs, pafs.LocalFileSystem)
        target = self.path(rel)
        name = target if direct else f"{target}.{os.getpid()}.tmp"
        if not direct:
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        try:
            with open(local, "rb") as src, self.fs.open_output_stream(name) as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
            if not direct:
                self.fs.move(name, target)
        except BaseException:
            if not direct and self.fs.get_file_info(name).type == pafs.FileType.File:
                self.fs.delete_file(name)
            raise

    def get(self, rel: str, local: Path) -> None:
        """Download a file to `local` (written to a temp name, then renamed)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
        try:
            with self.fs.open_input_stream(self.path(rel)) as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, rel: str) -> None:
        self.fs.delete_file(self.path(rel))

    def move(self, src: str, dst: str) -> None:
        """Rename within the store (a server-side copy and delete on an object store)."""
        self.fs.move(self.path(src), self.path(dst))


def open_store(url: str, cfg: StorageConfig | None = None, check: bool = True) -> Store:
    """The store at `url`; with `check`, fail now (StorageError naming the setting) if it does not answer or
    its bucket does not exist."""
    cfg = cfg or StorageConfig()
    fs, root, setting = _filesystem(url, cfg)
    store = Store(url, fs, root)
    if check:
        bucket = root.split("/", 1)[0]
        try:
            info = fs.get_file_info(bucket if isinstance(fs, (pafs.S3FileSystem, pafs.GcsFileSystem)) else root)
        except OSError as err:
            raise StorageError(f"cannot reach the store of {url} ({setting}): {str(err).splitlines()[0]}; "
                               "check the endpoint, the network and the credentials") from err
        if isinstance(fs, (pafs.S3FileSystem, pafs.GcsFileSystem)) and info.type == pafs.FileType.NotFound:
            raise StorageError(f"--out {url}: the bucket {bucket!r} does not exist at {setting}; create it "
                               "or change --out")
    return store
