"""A prepared corpus: token shards plus a manifest, in a local folder or at any fsspec URL.

`open_corpus(location)` reads a folder `composerlite data prepare` wrote (or a copy of it on a shared
file system or an object store) without tokenizing anything. `prepare_corpus(spec)` is what `--data`
does: a prepared corpus is opened as it is; any other source (a file, a folder of files, `hf:NAME`,
the default corpus) is prepared once into the local cache (`COMPOSERLITE_CACHE`, default
~/.cache/composerlite), by the same code as `data prepare`, and opened from there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from composerlite.data.errors import DataError
from rich.console import Console

from composerlite.data.prepare import FORMAT, FORMAT_VERSION, MANIFEST_FILE, SplitRule, prepare
from composerlite.data.progress import progress_display
from composerlite.data.shards import HEADER_BYTES, TOKEN_BYTES, ShardBlocks
from composerlite.data.sources import resolve_source
from composerlite.data.tokenizer import GPT2Tokenizer, load_tokenizer

# Part of every cache folder's name: bump when the preparation's output for a given source changes.
CACHE_FORMAT_VERSION = 2


@dataclass
class Corpus:
    name: str
    location: str  # a local folder or an fsspec URL
    manifest: dict[str, Any]
    train: ShardBlocks
    eval: ShardBlocks

    @property
    def id(self) -> str:
        """Identifies the tokens themselves (their shards' hashes and the split rule), wherever they lie."""
        content = [self.manifest["tokenizer"], self.manifest["split"],
                   {split: [shard["sha256"] for shard in self.manifest["shards"][split]] for split in ("train", "eval")}]
        return f"{self.name}-{hashlib.sha256(json.dumps(content).encode()).hexdigest()[:20]}"

    @property
    def n_documents(self) -> int:
        return self.manifest["documents"]["all"]

    @property
    def is_local(self) -> bool:
        return isinstance(self.train.fs, LocalFileSystem)


def is_prepared_corpus(spec: str | None) -> bool:
    """Whether `spec` names a folder or URL holding a prepared corpus's manifest (cheap: one lookup)."""
    if not spec or spec == "default" or spec.startswith("hf:"):
        return False
    if "://" not in spec:
        return (Path(spec).expanduser() / MANIFEST_FILE).is_file()
    try:
        fs, path = fsspec.core.url_to_fs(spec)
        return fs.isfile(f"{path.rstrip('/')}/{MANIFEST_FILE}")
    except Exception:  # an unknown scheme, a missing client package, no access: the source resolver says which
        return False


def open_corpus(location: str | Path) -> Corpus:
    """The prepared corpus at `location`, its manifest and shards checked (format, tokenizer, every
    shard present at its size); blocks are checked against their hashes as they are read."""
    location = str(location)
    fs, root = fsspec.core.url_to_fs(location if "://" in location else str(Path(location).expanduser().resolve()))
    root = root.rstrip("/")
    try:
        manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST_FILE}"))
    except FileNotFoundError:
        raise DataError(f"{location} is not a prepared corpus (no {MANIFEST_FILE}); make one with "
                        "`composerlite data prepare SOURCE --out DIR`") from None
    except json.JSONDecodeError:
        raise DataError(f"{location}/{MANIFEST_FILE} is not valid JSON") from None
    check_manifest(manifest, location)
    sizes = {PurePosixPath(info["name"]).name: info.get("size") for info in fs.ls(root, detail=True)}
    for split in ("train", "eval"):
        for shard in manifest["shards"][split]:
            expected = HEADER_BYTES + shard["tokens"] * TOKEN_BYTES
            if shard["file"] not in sizes:
                raise DataError(f"{location}: shard {shard['file']} is missing")
            if sizes[shard["file"]] != expected:
                raise DataError(f"{location}: shard {shard['file']} has {sizes[shard['file']]} bytes, "
                                f"the manifest says {expected}; copy it again")
    blocks = {split: ShardBlocks(fs, root, manifest["shards"][split], manifest["block_tokens"], location)
              for split in ("train", "eval")}
    return Corpus(name=manifest["source"]["name"], location=location, manifest=manifest, **blocks)


def check_manifest(manifest: dict[str, Any], location: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{location}/{MANIFEST_FILE} is not a composerlite corpus manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{location} is a format version {manifest.get('format_version')} corpus; this composerlite "
                        f"reads version {FORMAT_VERSION}: prepare it again")
    if manifest.get("tokenizer") != GPT2Tokenizer.identity:
        raise DataError(f"{location} was tokenized with {manifest.get('tokenizer')}, not this composerlite's "
                        f"{GPT2Tokenizer.identity}: prepare it again")


def prepare_corpus(spec: str | None, cache_dir: str | Path | None = None, eval_fraction: float = 0.02,
                   console: Console | None = None) -> Corpus:
    """The corpus `--data spec` trains on: a prepared corpus as it is, any other source prepared once
    into the cache (see the module docstring), its progress shown on `console` if one is given."""
    rule = SplitRule(eval_fraction=eval_fraction)  # checks it
    if is_prepared_corpus(spec):
        return open_corpus(spec)
    source = resolve_source(spec)
    cache_key = hashlib.sha256(
        json.dumps([CACHE_FORMAT_VERSION, load_tokenizer().identity, source.identity(), eval_fraction]).encode()
    ).hexdigest()[:20]
    cache_path = cache_root(cache_dir) / f"{_slug(source.name)}-{cache_key}"
    if not (cache_path / MANIFEST_FILE).exists():
        # On a terminal the line clears when done: the run's own lines (or its one-line error) follow.
        with progress_display(console or Console(quiet=True), f"preparing {source.name} (once)") as on_progress:
            prepare(source, cache_path, rule=rule, on_progress=on_progress)
    return open_corpus(cache_path)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("COMPOSERLITE_CACHE") or Path.home() / ".cache" / "composerlite"
    return Path(cache_dir).expanduser()


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)[:60]
