"""`composerlite data prepare SOURCE --out DIR` and `composerlite data info DIR`."""

from __future__ import annotations

import argparse
import json
import time

from rich.console import Console
from rich.table import Table

from composerlite.commands.flags import flag_console
from composerlite.system.storage import StorageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    prepare = actions.add_parser("prepare", help="tokenize a source into token shards plus a manifest (resumable)",
                                 description="Tokenize SOURCE in one streaming pass into llm.c-format token shards "
                                             "and a manifest in DIR. Rerun the same command after an interruption "
                                             "to continue where it stopped.")
    prepare.add_argument("source", metavar="SOURCE", help="what --data accepts: a file or folder (txt/md/jsonl/json/"
                         "parquet, or a save_to_disk folder), an fsspec URL, hf:NAME[:CONFIG][@SPLIT], or default")
    prepare.add_argument("--out", required=True, metavar="DIR", help="a new or empty local folder (or the folder of "
                         "an interrupted preparation, to continue it)")
    prepare.add_argument("--workers", type=int, help="tokenizer threads (default: every CPU this process may use)")
    prepare.add_argument("--eval-fraction", type=float, default=0.02,
                         help="share of documents held out for evaluation (default 0.02, up to 10M tokens)")
    info = actions.add_parser("info", help="print a prepared corpus's manifest: source, tokenizer, split, counts")
    info.add_argument("corpus", metavar="DIR", help="a prepared corpus: local folder or fsspec URL")
    info.add_argument("--verify", action="store_true", help="read every block and check it against its SHA-256")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")


def main(args: argparse.Namespace) -> int:
    return {"prepare": prepare_command, "info": info_command}[args.action](args)


def prepare_command(args: argparse.Namespace) -> int:
    from composerlite.data.prepare import SplitRule, prepare
    from composerlite.data.progress import progress_display
    from composerlite.data.sources import resolve_source

    rule = SplitRule(eval_fraction=args.eval_fraction)
    source = resolve_source(args.source)
    console = flag_console()
    started = time.perf_counter()
    try:
        with progress_display(console, f"tokenizing {source.name}") as on_progress:
            manifest = prepare(source, args.out, workers=args.workers, rule=rule, on_progress=on_progress)
    except OSError as error:  # a full disk, a lost mount: what was published stays, and a rerun continues
        raise StorageError(f"writing {args.out} failed: {error.strerror or error}; what was written is kept, "
                            "and the same command continues from the last checkpoint") from error
    console.print(f"prepared {manifest['documents']['all']:,} documents into {args.out}: "
                  f"{manifest['tokens']['train']:,} train and {manifest['tokens']['eval']:,} held-out tokens "
                  f"({time.perf_counter() - started:.1f} s). Train on it with --data {args.out}")
    return 0


def info_command(args: argparse.Namespace) -> int:
    from composerlite.data.corpus import open_corpus

    corpus = open_corpus(args.corpus)
    manifest = corpus.manifest
    if args.json:
        print(json.dumps({key: value for key, value in manifest.items() if key != "shards"} |
                         {"shards": {split: [{k: v for k, v in shard.items() if k != "block_sha256"} for shard in shards]
                                     for split, shards in manifest["shards"].items()}}, indent=1))
    else:
        Console().print(manifest_table(corpus))
    if args.verify:
        for split in ("train", "eval"):
            blocks = getattr(corpus, split)
            for index in range(blocks.n_blocks):
                blocks.read_block(index)  # raises DataError on a mismatch
        flag_console().print(f"verified: every block of {args.corpus} matches its SHA-256")
    return 0


def manifest_table(corpus) -> Table:
    manifest = corpus.manifest
    table = Table(title=f"prepared corpus {corpus.location}", show_header=False)
    table.add_row("source", manifest["source"]["description"])
    table.add_row("tokenizer", manifest["tokenizer"])
    split = manifest["split"]
    table.add_row("held-out split", f"{split['eval_fraction']:.1%} of documents in each block of {split['block_documents']:,} "
                  f"(seed {split['seed']}), up to {split['eval_token_budget']:,} tokens")
    table.add_row("documents", f"{manifest['documents']['all']:,} ({manifest['documents']['eval']:,} held out)")
    for name in ("train", "eval"):
        shards = manifest["shards"][name]
        table.add_row(f"{name} tokens", f"{manifest['tokens'][name]:,} in {len(shards)} shard{'s' * (len(shards) != 1)}")
    table.add_row("format", f"{manifest['format']} v{manifest['format_version']}: llm.c .bin shards of "
                  f"{manifest['block_tokens'] * manifest['blocks_per_shard']:,} tokens, read in blocks of "
                  f"{manifest['block_tokens']:,}")
    table.add_row("prepared", f"{manifest['created']} from {manifest['source_bytes'] / 1e6:,.1f} MB of text")
    table.add_row("corpus id", corpus.id)
    return table
