"""The streaming data layer at scale, measured on the machine it runs on: `data prepare`'s peak memory
and speed, and the loader's speed per process, from a local folder and from an S3 store.

What it measures (issue: "data prepare" flat in memory, near tiktoken's own speed; the loader far
above what one GPU consumes):

1. Corpora: synthetic English JSON Lines (`{"text": ...}` a line) of about each `--sizes-gb`,
   made deterministically from the default corpus (the King James Bible): a document is a run of
   1-8 consecutive chapters, with about a quarter of its verses shuffled among themselves (so no
   two documents are alike), cut at a verse to a log-normal length (median ~2.5k characters,
   from a few hundred to tens of thousands, like web text) and laid out in paragraphs of 1-5
   verses. One generator writes every size, so each smaller corpus is a prefix of the larger ones.
2. `python -m composerlite data prepare CORPUS --out DIR`, a whole process per size: wall
   seconds, the command's own seconds (its last line), and the child's peak resident memory. The
   peak is the `ru_maxrss` that `os.wait4(pid)` returns for that one child (RUSAGE_CHILDREN would
   be the maximum over every child so far, and a `/usr/bin/time` wrapper would add a process);
   VmRSS is also sampled from /proc every 0.2 s, which shows whether memory grows during the pass.
3. tiktoken's own rate on the same cores in the same run: a separate process loads the smallest
   corpus's texts (not timed) and times `encode_ordinary_batch(texts, num_threads=N)`, N =
   `prepare.default_workers()`, with the GPT-2 encoding composerlite uses. Prepare (into a fresh
   folder) and tiktoken alternate `--repeats` times, which goes first alternating too, so drift
   hits both alike; each pair gives a ratio (prepare's text tokens/s, whole process, over
   tiktoken's), reported with their median and a 95% t-interval of the geometric mean. Prepare's
   token count less its one end-of-text per document must equal tiktoken's (same texts, same BPE).
4. The loader's tokens/s in this one process: `BatchStream(split, seq_len, batch_size, seed=0)`
   (world size 1, prefetch 2), time to the first batch, then `--loader-warmup` batches, then
   `--loader-batches` timed batches (0: the rest of the epoch, so every block's read and SHA-256
   check is in the time). Local: the largest prepared corpus, with its shards' pages evicted from
   the page cache (POSIX_FADV_DONTNEED, best effort: a VM's host may still cache them) and again
   warm. S3: moto's ThreadedMotoServer on 127.0.0.1 (in this process, so it competes with the
   loader for the same cores and the GIL), holding the smallest prepared corpus.
   A rank of a multi-process run runs this same code on its own lanes' blocks, so the figure is
   per process.
5. A JSON record (`--out`): the machine, versions, git commit and the data layer's file hashes,
   load averages, every raw measurement, the derived figures and verdicts against the targets.
   On a shared VM the cores are not all ours: the record says what N busy processes get done
   against one alone (`parallel_check`), and for each child the cores it kept busy and the cores
   the rest of the machine used meanwhile (from /proc/stat), so a slow run can be told from a
   crowded one.

    python benchmarks/data_scale.py --out benchmarks/results/data_scale_cpu_<date>.json
    python benchmarks/data_scale.py --sizes-gb 0.002,0.004 --repeats 2 --loader-batches 4 --out /tmp/x.json  # smoke
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
GB = 1e9
GIB = 1 << 30
# Targets of the issue.
PEAK_RSS_LIMIT = 1.5 * GIB
RATE_RATIO_TARGET = 0.8
LOADER_TARGET = 3e6
# "Flat in the corpus size": the largest corpus's peak may exceed the smallest's by at most this
# factor (chosen before measuring; memory proportional to the corpus would give sizes[-1]/sizes[0]).
FLAT_RATIO_LIMIT = 1.25
RSS_SAMPLE_S = 0.2
SEED = 20241203


# -- where it runs --------------------------------------------------------------------------------

def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []))
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total_kib = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")), 0)
    return {
        "cpu": model,
        "logical_cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "sha_ni": "sha_ni" in flags,
        "ram_gib": round(total_kib / (1 << 20), 1),
        "platform": platform.platform(),
    }


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in ("torch", "tiktoken", "numpy", "fsspec", "s3fs", "moto", "composerlite"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def git_state() -> dict:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def data_layer_hashes() -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of each data-layer file: the commit alone does not say which
    uncommitted code ran."""
    files = sorted((REPO / "composerlite" / "data").glob("*.py")) + [REPO / "composerlite" / "commands" / "data.py"]
    return {str(path.relative_to(REPO)): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            for path in files if path.exists()}


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (every process, all cores), from /proc/stat."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _spin(seconds: float, results) -> None:
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        count += 1
    results.put(count)


def parallel_check(seconds: float = 2.0) -> dict:
    """How much work N busy processes get done against one alone, N = the cores available: what the
    'cores' of a shared VM deliver (hyperthreads or a busy host give well under N)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    counts = {}
    for processes in (1, n):
        results = context.Queue()
        workers = [context.Process(target=_spin, args=(seconds, results)) for _ in range(processes)]
        for worker in workers:
            worker.start()
        counts[processes] = [results.get() for _ in workers]
        for worker in workers:
            worker.join()
    return {"processes": n, "seconds": seconds, "one_alone": counts[1][0], "each_of_n": counts[n],
            "speedup_of_n": round(sum(counts[n]) / counts[1][0], 3)}


# -- 1. corpora -----------------------------------------------------------------------------------

def bible_chapters() -> tuple[list[str], list[list[str]]]:
    """(title, verses) of every chapter of the default corpus, in order."""
    from composerlite.data.sources import BibleSource

    titles, verses = [], []
    for text, _cursor in BibleSource().documents():
        title, _, body = text.partition("\n\n")
        titles.append(title)
        verses.append(body.split("\n"))
    return titles, verses


def documents(seed: int):
    """An endless, deterministic stream of synthetic documents (see the module docstring)."""
    titles, chapters = bible_chapters()
    rng = random.Random(seed)
    n = len(chapters)
    while True:
        first = rng.randrange(n)
        verses = [verse for chapter in chapters[first:first + rng.randint(1, 8)] for verse in chapter]
        shuffled = rng.sample(range(len(verses)), k=max(len(verses) // 4, min(2, len(verses))))
        moved = [verses[i] for i in shuffled]
        rng.shuffle(moved)
        for i, verse in zip(shuffled, moved):
            verses[i] = verse
        target = min(max(rng.lognormvariate(math.log(2500), 1.1), 150), 60_000)
        kept, length = [], len(titles[first])
        for verse in verses:
            kept.append(verse)
            length += len(verse) + 1
            if length >= target:
                break
        paragraphs, at = [], 0
        while at < len(kept):
            step = rng.randint(1, 5)
            paragraphs.append(" ".join(kept[at:at + step]))
            at += step
        yield titles[first] + "\n\n" + "\n\n".join(paragraphs)


def generate_corpora(folder: Path, sizes_gb: list[float], seed: int, log) -> list[dict]:
    """One JSON Lines file of about each size (each a prefix of the next larger one)."""
    targets = sorted(sizes_gb)
    paths = [folder / f"corpus_{size:g}gb.jsonl" for size in targets]
    files = [path.open("wb") for path in paths]
    digests = [hashlib.sha256() for _ in paths]
    written, docs, characters = 0, 0, []
    open_from, started = 0, time.perf_counter()
    counts = []
    try:
        for text in documents(seed):
            line = (json.dumps({"text": text}) + "\n").encode()
            for index in range(open_from, len(files)):
                files[index].write(line)
                digests[index].update(line)
            written += len(line)
            docs += 1
            characters.append(len(text))
            while open_from < len(files) and written >= targets[open_from] * GB:
                files[open_from].close()
                counts.append({"bytes": written, "documents": docs,
                               "characters_per_document": _quantiles(characters)})
                log(f"  {paths[open_from].name}: {written / 1e6:,.0f} MB, {docs:,} documents "
                    f"({time.perf_counter() - started:.0f} s)")
                open_from += 1
            if open_from == len(files):
                break
    finally:
        for file in files:
            file.close()
    return [{"size_gb": size, "path": str(path), "sha256": digest.hexdigest(), **count}
            for size, path, digest, count in zip(targets, paths, digests, counts)]


def _quantiles(values: list[int]) -> dict:
    ordered = sorted(values)
    pick = lambda q: ordered[min(int(q * len(ordered)), len(ordered) - 1)]  # noqa: E731
    return {"min": ordered[0], "p10": pick(0.1), "median": pick(0.5), "p90": pick(0.9), "p99": pick(0.99),
            "max": ordered[-1], "mean": round(sum(ordered) / len(ordered), 1)}


def check_disk(folder: Path, sizes_gb: list[float]) -> None:
    """Text plus ~0.5x for shards per size, plus one more prepare of the smallest (the repeats)."""
    need = sum(size * GB * 1.5 for size in sizes_gb) + min(sizes_gb) * GB * 0.5
    free = shutil.disk_usage(folder).free
    if free < need * 1.1:
        raise SystemExit(f"data_scale: not enough disk under {folder}: {free / GB:.1f} GB free, "
                         f"{need * 1.1 / GB:.1f} GB needed (text + shards for {','.join(map(str, sizes_gb))} GB, 10% spare)")


# -- 2. a child process, its wall time and peak memory ---------------------------------------------

def run_measured(command: list[str], log_path: Path, env: dict | None = None) -> dict:
    """Runs `command`, sampling its VmRSS; returns wall seconds, exit code and its peak RSS from
    `os.wait4` (this child's own rusage, not the maximum over all children)."""
    busy_before = cpu_seconds()
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        samples: list[tuple[float, int]] = []
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            rss = _vm_rss(process.pid)
            if rss is not None:
                samples.append((round(time.perf_counter() - started, 2), rss))
            time.sleep(RSS_SAMPLE_S)
        wall = time.perf_counter() - started
    busy_after = cpu_seconds()
    process.returncode = os.waitstatus_to_exitcode(status)
    output = log_path.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    own = usage.ru_utime + usage.ru_stime
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "user_s": usage.ru_utime,
            "system_s": usage.ru_stime, "rss_samples": _thin(samples), "output": output,
            # cores the child kept busy on average, and the rest of the machine (everything else) meanwhile
            "cores_used": round(own / wall, 3),
            "others_cores": round(max((busy_after - busy_before - own) / wall, 0.0), 3)
            if busy_before is not None and busy_after is not None else None}


def _vm_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _thin(samples: list[tuple[float, int]], keep: int = 40) -> list[list[float]]:
    """At most `keep` evenly spaced (seconds, MiB) samples, the largest one always among them."""
    if not samples:
        return []
    step = max(1, len(samples) // keep)
    chosen = set(range(0, len(samples), step)) | {max(range(len(samples)), key=lambda i: samples[i][1]), len(samples) - 1}
    return [[samples[i][0], round(samples[i][1] / (1 << 20), 1)] for i in sorted(chosen)]


def composerlite_command() -> list[str]:
    """`python -m composerlite` when it works here, else the `composerlite` entry point."""
    probe = subprocess.run([sys.executable, "-m", "composerlite", "--help"], capture_output=True, cwd=REPO, timeout=120)
    if probe.returncode == 0:
        return [sys.executable, "-m", "composerlite"]
    entry = shutil.which("composerlite")
    if entry is None:
        raise SystemExit("data_scale: neither `python -m composerlite` nor a `composerlite` command works here")
    return [entry]


def run_prepare(command: list[str], corpus: Path, out: Path, logs: Path) -> dict:
    measured = run_measured([*command, "data", "prepare", str(corpus), "--out", str(out)],
                            logs / f"prepare_{out.name}.log", env={**os.environ, "COLUMNS": "200"})
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = manifest["tokens"]["train"] + manifest["tokens"]["eval"]
    documents = manifest["documents"]["all"]
    own = re.findall(r"\(([\d.]+) s\)", measured.pop("output"))
    result = {
        "corpus": corpus.name, "wall_s": round(measured["wall_s"], 3),
        "command_s": float(own[-1]) if own else None,
        "peak_rss_bytes": measured["peak_rss_bytes"], "peak_rss_mib": round(measured["peak_rss_bytes"] / (1 << 20), 1),
        "user_s": round(measured["user_s"], 2), "system_s": round(measured["system_s"], 2),
        "tokens": tokens, "text_tokens": tokens - documents, "documents": documents,
        "train_tokens": manifest["tokens"]["train"], "eval_tokens": manifest["tokens"]["eval"],
        "source_bytes": manifest["source_bytes"],
        "shards": {split: len(manifest["shards"][split]) for split in ("train", "eval")},
        "shard_bytes": sum(path.stat().st_size for path in out.glob("*.bin")),
        "rss_samples_s_mib": measured["rss_samples"], "cores_used": measured["cores_used"],
        "others_cores": measured["others_cores"], "load_average": load_average(),
    }
    # prepare.py routes the documents of a last, partial block twice (once as if the block were full,
    # then again from the last checkpoint with the block's real size): those are tokenized twice.
    block_documents = manifest["split"]["block_documents"]
    result["last_block_documents_routed_twice"] = documents % block_documents
    result["documents_tokenized"] = documents + documents % block_documents
    result["text_tokens_per_cpu_s"] = result["text_tokens"] / (result["user_s"] + result["system_s"])
    result["text_tokens_per_s"] = result["text_tokens"] / result["wall_s"]
    result["tokens_per_s"] = tokens / result["wall_s"]
    result["text_mb_per_s"] = result["source_bytes"] / 1e6 / result["wall_s"]
    if result["command_s"]:
        result["text_tokens_per_s_in_command"] = result["text_tokens"] / result["command_s"]
    return result


# -- 3. tiktoken's own rate -----------------------------------------------------------------------

def tiktoken_child(corpus: str, threads: int) -> None:
    """In its own process: times encode_ordinary_batch over every text of `corpus`; prints JSON."""
    import gc

    from composerlite.data.tokenizer import load_tokenizer

    encoding = load_tokenizer()._encoding
    with open(corpus, "rb") as lines:
        texts = [json.loads(line)["text"] for line in lines if line.strip()]
    encoding.encode_ordinary_batch(texts[:64], num_threads=threads)  # thread start-up and caches, not timed
    gc.collect()
    started_cpu, started = time.process_time(), time.perf_counter()
    encoded = encoding.encode_ordinary_batch(texts, num_threads=threads)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    tokens = sum(map(len, encoded))
    del encoded
    gc.collect()
    # A diagnostic, not the comparison: prepare's own tokenizing (its `encode` task: encode_to_numpy
    # in batches of 256 documents on a pool of `threads`) on the same texts already in memory, so
    # the record shows what prepare's reading, routing and writing cost on top of it.
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from composerlite.data.prepare import BATCH_DOCUMENTS

    tokenizer, eot = load_tokenizer(), np.array([50256], dtype=np.uint16)

    def encode(batch: list[str]) -> int:
        return sum(len(np.concatenate([tokenizer.encode_array(text), eot])) - 1 for text in batch)

    started_cpu, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        same = sum(pool.map(encode, [texts[i:i + BATCH_DOCUMENTS] for i in range(0, len(texts), BATCH_DOCUMENTS)]))
    pool_seconds, pool_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    print(json.dumps({"seconds": seconds, "cpu_s": cpu_seconds, "tokens": tokens, "texts": len(texts),
                      "threads": threads, "tokens_per_s": tokens / seconds, "cores_used_timed": cpu_seconds / seconds,
                      "prepare_encode_in_memory": {"seconds": pool_seconds, "cpu_s": pool_cpu, "tokens": same,
                                                   "tokens_per_s": same / pool_seconds}}))


def run_tiktoken(corpus: Path, threads: int, logs: Path, index: int) -> dict:
    measured = run_measured([sys.executable, str(SCRIPT), "--tiktoken-child", str(corpus), "--threads", str(threads)],
                            logs / f"tiktoken_{index}.log")
    result = json.loads(measured["output"].strip().splitlines()[-1])
    return {**{key: (round(value, 3) if isinstance(value, float) and key != "tokens_per_s" else value)
               for key, value in result.items()},
            "process_wall_s": round(measured["wall_s"], 3),
            "peak_rss_mib": round(measured["peak_rss_bytes"] / (1 << 20), 1), "cores_used": measured["cores_used"],
            "others_cores": measured["others_cores"], "load_average": load_average()}


def log_interval(ratios: list[float]) -> dict:
    """Median, geometric mean and its 95% Student-t interval over per-pair ratios."""
    from scipy import stats

    logs = [math.log(ratio) for ratio in ratios]
    mean = statistics.fmean(logs)
    result = {"median": statistics.median(ratios), "geometric_mean": math.exp(mean), "n": len(ratios)}
    if len(logs) >= 2:
        half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        result["ci95"] = [math.exp(mean - half), math.exp(mean + half)]
    else:
        result["ci95"] = None
    return result


# -- 4. the loader ----------------------------------------------------------------------------------

def loader_rate(blocks, seq_len: int, batch_size: int, warmup: int, batches: int, seed: int = 0) -> dict:
    from composerlite.data import BatchStream

    stream = BatchStream(blocks, seq_len=seq_len, batch_size=batch_size, seed=seed, prefetch=2)
    total = len(stream)
    warmup = min(warmup, total - 1)
    timed = (total - 1 - warmup) if batches <= 0 else min(batches, total - 1 - warmup)
    started = time.perf_counter()
    iterator = iter(stream.epoch(0))
    first = next(iterator)
    first_s = time.perf_counter() - started
    checksum = int(first["input_ids"][0, 0])
    for _ in range(warmup):
        next(iterator)
    started_cpu, started = time.process_time(), time.perf_counter()
    for _ in range(timed):
        batch = next(iterator)
        checksum ^= int(batch["input_ids"][-1, -1])  # touch every batch
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    iterator.close()
    tokens = timed * stream.tokens_per_batch
    return {"first_batch_s": round(first_s, 3), "warmup_batches": warmup, "batches": timed,
            "batches_in_epoch": total, "tokens": tokens, "seconds": round(seconds, 6),
            "cpu_s": round(cpu_seconds, 6), "tokens_per_s": tokens / seconds if seconds > 0 else float("inf"),
            "lanes": stream._n_lanes, "load_average": load_average()}


def evict_page_cache(folder: Path) -> bool:
    """Drops the shards' clean pages from the page cache (POSIX_FADV_DONTNEED); False if unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in folder.glob("*.bin"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def local_loader(folder: Path, args, log) -> dict:
    from composerlite.data import open_corpus

    runs = {"cold": [], "warm": []}
    for repeat in range(args.loader_repeats):
        for cache in ("cold", "warm"):
            evicted = evict_page_cache(folder) if cache == "cold" else None
            corpus = open_corpus(folder)
            run = loader_rate(corpus.train, args.seq_len, args.batch_size, args.loader_warmup, args.loader_batches)
            run["page_cache_evicted"] = evicted
            runs[cache].append(run)
            log(f"  local ({cache} page cache) {repeat + 1}/{args.loader_repeats}: {run['tokens_per_s'] / 1e6:,.1f}M tokens/s "
                f"over {run['batches']:,} batches, first batch {run['first_batch_s']:.2f} s")
    return {"corpus": str(folder.name), "train_tokens": corpus.train.n_tokens, "train_blocks": corpus.train.n_blocks,
            **{cache: {"runs": values, "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in values)}
               for cache, values in runs.items()}}


def s3_loader(folder: Path, args, log) -> dict:
    """The prepared corpus in `folder`, uploaded to a moto S3 server in this process, read back."""
    import fsspec
    from moto.server import ThreadedMotoServer

    from composerlite.data import open_corpus

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                                   "AWS_ENDPOINT_URL")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    # fsspec caches one S3 file system per set of arguments, whatever the endpoint: drop any made for
    # another endpoint now, and ours (soon pointing at a stopped server) when done.
    fsspec.get_filesystem_class("s3").clear_instance_cache()
    try:
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("data-scale")
        started = time.perf_counter()
        uploaded = 0
        for path in sorted(folder.iterdir()):
            if path.name == "manifest.json" or path.suffix == ".bin":
                fs.put_file(str(path), f"data-scale/corpus/{path.name}")
                uploaded += path.stat().st_size
        upload_s = time.perf_counter() - started
        fsspec.filesystem("s3").invalidate_cache()
        log(f"  uploaded {uploaded / 1e6:,.0f} MB to moto S3 in {upload_s:.1f} s")
        runs = []
        for repeat in range(args.loader_repeats):
            corpus = open_corpus("s3://data-scale/corpus")
            run = loader_rate(corpus.train, args.seq_len, args.batch_size, args.loader_warmup, args.loader_batches)
            runs.append(run)
            log(f"  S3 {repeat + 1}/{args.loader_repeats}: {run['tokens_per_s'] / 1e6:,.1f}M tokens/s over "
                f"{run['batches']:,} batches, first batch {run['first_batch_s']:.2f} s")
        return {"corpus": folder.name, "url": "s3://data-scale/corpus", "endpoint": "moto ThreadedMotoServer, 127.0.0.1, "
                "in the benchmark's own process (it competes with the loader for the cores and the GIL)",
                "uploaded_bytes": uploaded, "upload_s": round(upload_s, 2),
                "train_tokens": corpus.train.n_tokens, "train_blocks": corpus.train.n_blocks, "runs": runs,
                "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs)}
    finally:
        server.stop()
        fsspec.get_filesystem_class("s3").clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- 5. verdicts, summary, main ---------------------------------------------------------------------

def verdicts(prepares: dict, rate: dict, local: dict, s3: dict, sizes: list[float]) -> dict:
    small, large = f"{min(sizes):g}", f"{max(sizes):g}"
    small_peak = statistics.median(run["peak_rss_bytes"] for run in prepares[small])
    large_peak = max(run["peak_rss_bytes"] for run in prepares[large])
    every_peak = max(run["peak_rss_bytes"] for runs in prepares.values() for run in runs)
    flat = large_peak / small_peak
    ratio, interval = rate["median"], rate["ci95"]
    if interval is None:
        resolved = "one pair: no interval"
    elif interval[0] >= RATE_RATIO_TARGET:
        resolved = "the whole interval is at or above the target"
    elif interval[1] < RATE_RATIO_TARGET:
        resolved = "the whole interval is below the target"
    else:
        resolved = "the interval straddles the target"
    local_worst = min(local["cold"]["median_tokens_per_s"], local["warm"]["median_tokens_per_s"])
    return {
        "prepare_peak_rss": {
            "target": f"at most {PEAK_RSS_LIMIT / GIB:g} GiB, flat in the corpus size (largest/smallest at most "
                      f"{FLAT_RATIO_LIMIT}, our reading of 'flat': proportional memory would give "
                      f"{max(sizes) / min(sizes):g})",
            "max_peak_gib": round(every_peak / GIB, 3),
            f"peak_{large}gb_over_{small}gb": round(flat, 3),
            "met": every_peak <= PEAK_RSS_LIMIT and flat <= FLAT_RATIO_LIMIT,
        },
        "prepare_rate_vs_tiktoken": {
            "target": f"at least {RATE_RATIO_TARGET}x tiktoken's encode_ordinary_batch on the same cores",
            "median_ratio": round(ratio, 3), "geometric_mean": round(rate["geometric_mean"], 3),
            "ci95": [round(value, 3) for value in interval] if interval else None,
            "met": ratio >= RATE_RATIO_TARGET, "resolved": resolved,
        },
        "loader_local": {
            "target": f"at least {LOADER_TARGET / 1e6:g}M tokens/s per process",
            "median_tokens_per_s_cold": round(local["cold"]["median_tokens_per_s"]),
            "median_tokens_per_s_warm": round(local["warm"]["median_tokens_per_s"]),
            "met": local_worst >= LOADER_TARGET,
        },
        "loader_s3_moto": {
            "target": f"at least {LOADER_TARGET / 1e6:g}M tokens/s per process",
            "median_tokens_per_s": round(s3["median_tokens_per_s"]),
            "met": s3["median_tokens_per_s"] >= LOADER_TARGET,
        },
    }


def print_summary(record: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"data_scale on {record['machine']['cpu']} ({record['machine']['logical_cores_available']} cores), "
                        f"load {record['load_average_start']} -> {record['load_average_end']}")
    for column in ("measurement", "value", "target", "met"):
        table.add_column(column)
    for size, runs in record["prepare"].items():
        peaks = ", ".join(f"{run['peak_rss_mib']:,.0f}" for run in runs)
        rates = ", ".join(f"{run['text_tokens_per_s'] / 1e6:.2f}M" for run in runs)
        table.add_row(f"prepare {size} GB: peak RSS (MiB)", peaks, f"<= {PEAK_RSS_LIMIT / (1 << 20):,.0f}", "")
        table.add_row(f"prepare {size} GB: text tokens/s", rates, "", "")
    ticks = ", ".join(f"{run['tokens_per_s'] / 1e6:.2f}M" for run in record["tiktoken"])
    check = record["parallel_check"]
    table.add_row(f"{check['processes']} busy processes vs 1 (what the cores deliver)", f"{check['speedup_of_n']:.2f}x", "", "")
    table.add_row(f"tiktoken encode_ordinary_batch ({record['threads']} threads) tokens/s", ticks, "", "")
    table.add_row("prepare's tokenizing alone, texts in memory (diagnostic) tokens/s",
                  ", ".join(f"{run['prepare_encode_in_memory']['tokens_per_s'] / 1e6:.2f}M" for run in record["tiktoken"]), "", "")
    v = record["verdicts"]
    mark = lambda met: "[green]yes[/]" if met else "[red]NO[/]"  # noqa: E731
    memory = v["prepare_peak_rss"]
    flat_key = next(key for key in memory if key.startswith("peak_"))
    table.add_row("prepare peak RSS, max (GiB); largest/smallest", f"{memory['max_peak_gib']:.2f}; {memory[flat_key]:.2f}x",
                  f"<= 1.5; <= {FLAT_RATIO_LIMIT}x", mark(memory["met"]))
    rate = v["prepare_rate_vs_tiktoken"]
    ci = rate["ci95"]
    table.add_row("prepare / tiktoken, per pair", ", ".join(f"{r:.3f}" for r in record["rate_comparison"]["ratios"]), "", "")
    table.add_row("prepare / tiktoken per CPU second, per pair",
                  ", ".join(f"{r:.3f}" for r in record["rate_comparison"]["ratios_per_cpu_second"]), "", "")
    table.add_row("prepare / tiktoken, median [95% CI]",
                  f"{rate['median_ratio']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""), ">= 0.8", mark(rate["met"]))
    local = v["loader_local"]
    table.add_row("loader, local folder (cold; warm) tokens/s",
                  f"{local['median_tokens_per_s_cold'] / 1e6:,.1f}M; {local['median_tokens_per_s_warm'] / 1e6:,.1f}M",
                  ">= 3M", mark(local["met"]))
    table.add_row("loader, moto S3 tokens/s", f"{v['loader_s3_moto']['median_tokens_per_s'] / 1e6:,.1f}M", ">= 3M",
                  mark(v["loader_s3_moto"]["met"]))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gb", default="0.25,2", help="corpus sizes in GB of JSON Lines text (default 0.25,2)")
    parser.add_argument("--workdir", help="make the scratch folder inside this folder (default: under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (corpora, shards, logs)")
    parser.add_argument("--out", help="write the JSON record here")
    parser.add_argument("--repeats", type=int, default=3, help="alternating prepare/tiktoken pairs on the smallest corpus")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-warmup", type=int, default=10, help="batches before the loader's clock starts")
    parser.add_argument("--loader-batches", type=int, default=0,
                        help="timed loader batches (default 0: the rest of the epoch, every block read)")
    parser.add_argument("--loader-repeats", type=int, default=3)
    parser.add_argument("--parallel-check-s", type=float, default=2.0,
                        help="seconds of the busy-process check of what the cores deliver")
    parser.add_argument("--seed", type=int, default=SEED, help="the synthetic corpus's seed")
    parser.add_argument("--tiktoken-child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiktoken_child:
        tiktoken_child(args.tiktoken_child, args.threads)
        return 0

    from rich.console import Console

    from composerlite.data.prepare import default_workers

    console = Console(stderr=True)
    log = lambda message: console.print(message, highlight=False, soft_wrap=True)  # noqa: E731
    sizes = sorted(float(size) for size in args.sizes_gb.split(","))
    if len(sizes) < 2 or args.repeats < 1 or args.loader_repeats < 1:
        parser.error("--sizes-gb needs at least two sizes; --repeats and --loader-repeats at least 1")
    parent = Path(args.workdir).expanduser() if args.workdir else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    check_disk(parent, sizes)
    workdir = Path(tempfile.mkdtemp(prefix="data_scale_", dir=parent))
    logs = workdir / "logs"
    logs.mkdir()
    record: dict = {
        "benchmark": "benchmarks/data_scale.py", "argv": sys.argv[1:] if argv is None else argv,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": git_state(), "data_layer_sha256": data_layer_hashes(), "machine": machine(), "versions": versions(),
        "load_average_start": load_average(), "threads": default_workers(), "sizes_gb": sizes,
        "settings": {"seed": args.seed, "repeats": args.repeats, "seq_len": args.seq_len, "batch_size": args.batch_size,
                     "loader_warmup": args.loader_warmup, "loader_batches": args.loader_batches or "rest of the epoch",
                     "loader_repeats": args.loader_repeats, "rss_sample_s": RSS_SAMPLE_S},
        "method": {
            "peak_rss": "ru_maxrss of os.wait4(pid) for each `data prepare` child alone; VmRSS sampled every 0.2 s",
            "prepare_rate": "text tokens (manifest tokens less one end-of-text per document) / the child's wall "
                            "seconds, interpreter start and tokenizer load included",
            "tiktoken_rate": "encode_ordinary_batch(all texts of the smallest corpus, num_threads=default_workers()) "
                             "in its own process, texts loaded before the clock starts; Python lists of ints out",
            "pairs": "prepare (fresh folder) and tiktoken alternate, the first of each pair alternating",
            "prepare_encode_in_memory": "diagnostic, in the tiktoken process after its timed call: prepare's own "
                                        "tokenizing task (encode_to_numpy, 256-document batches, same pool size) "
                                        "on the texts in memory: prepare's ceiling without reading, routing, writing",
            "loader": "BatchStream(corpus.train, seq_len, batch_size, seed=0, prefetch=2), world size 1, in this process",
        },
    }
    try:
        command = composerlite_command()
        record["prepare_command"] = [Path(command[0]).name, *command[1:], "data", "prepare", "CORPUS", "--out", "DIR"]
        log(f"[bold]data_scale[/]: scratch {workdir}, load {record['load_average_start']}")
        record["parallel_check"] = parallel_check(args.parallel_check_s)
        log(f"  {record['parallel_check']['processes']} busy processes do {record['parallel_check']['speedup_of_n']}x "
            "the work of one alone")
        log("generating corpora")
        record["corpora"] = generate_corpora(workdir, sizes, args.seed, log)
        corpora = {f"{size:g}": Path(entry["path"]) for size, entry in zip(sizes, record["corpora"])}
        small, large = f"{sizes[0]:g}", f"{sizes[-1]:g}"
        prepares: dict[str, list[dict]] = {key: [] for key in corpora}
        prepared: dict[str, Path] = {}
        for key in corpora:  # every size but the smallest once; the smallest in the pairs below
            if key == small:
                continue
            out = workdir / f"prepared_{key}gb"
            log(f"prepare {key} GB")
            run = run_prepare(command, corpora[key], out, logs)
            prepares[key].append(run)
            prepared[key] = out
            log(f"  {run['wall_s']:.1f} s, {run['text_tokens_per_s'] / 1e6:.2f}M text tokens/s, "
                f"{run['text_mb_per_s']:.1f} MB/s, cores used {run['cores_used']:.2f}, peak RSS {run['peak_rss_mib']:,.0f} MiB")
        tiktoken_runs, ratios = [], []
        threads = default_workers()
        for pair in range(args.repeats):
            out = workdir / f"prepared_{small}gb_{pair}"
            order = ("prepare", "tiktoken") if pair % 2 == 0 else ("tiktoken", "prepare")
            for what in order:
                if what == "prepare":
                    run = run_prepare(command, corpora[small], out, logs)
                    run["pair"] = pair
                    prepares[small].append(run)
                else:
                    tick = run_tiktoken(corpora[small], threads, logs, pair)
                    tick["pair"] = pair
                    tiktoken_runs.append(tick)
            if not run["text_tokens"] == tick["tokens"] == tick["prepare_encode_in_memory"]["tokens"]:
                raise RuntimeError(f"prepare counted {run['text_tokens']} text tokens, tiktoken {tick['tokens']}")
            ratios.append(run["text_tokens_per_s"] / tick["tokens_per_s"])
            log(f"pair {pair + 1}/{args.repeats} ({' then '.join(order)}): prepare {run['text_tokens_per_s'] / 1e6:.2f}M, "
                f"tiktoken {tick['tokens_per_s'] / 1e6:.2f}M tokens/s: {ratios[-1]:.3f}x (prepare's tokenizing alone in memory "
                f"{tick['prepare_encode_in_memory']['tokens_per_s'] / 1e6:.2f}M) (cores used {run['cores_used']:.2f} "
                f"and {tick['cores_used_timed']:.2f}, the rest of the machine {run['others_cores']} and {tick['others_cores']}); "
                f"prepare peak RSS {run['peak_rss_mib']:,.0f} MiB")
            if pair == 0:
                prepared[small] = out
            else:
                shutil.rmtree(out)
        record["prepare"] = prepares
        record["tiktoken"] = tiktoken_runs
        in_command = [run["text_tokens_per_s_in_command"] / tick["tokens_per_s"]
                      for run, tick in zip(prepares[small][-args.repeats:], tiktoken_runs) if "text_tokens_per_s_in_command" in run]
        per_cpu = [run["text_tokens_per_cpu_s"] / (tick["tokens"] / tick["cpu_s"])
                   for run, tick in zip(prepares[small][-args.repeats:], tiktoken_runs)]
        record["rate_comparison"] = {
            "ratios": ratios, **log_interval(ratios),
            "ratios_command_time": in_command,
            "ratios_per_cpu_second": per_cpu,
            "note": "ratios: whole-process wall time (the verdict's); ratios_command_time: the command's own "
                    "seconds (interpreter start and imports left out); ratios_per_cpu_second: tokens per CPU "
                    "second, prepare's whole process against tiktoken's timed call (how much work each does "
                    "per token, whatever share of the cores it got)",
        }
        log(f"loader: local folder ({large} GB corpus)")
        record["loader_local"] = local_loader(prepared[large], args, log)
        log(f"loader: moto S3 ({small} GB corpus)")
        record["loader_s3"] = s3_loader(prepared[small], args, log)
        record["load_average_end"] = load_average()
        record["data_layer_changed_during_run"] = data_layer_hashes() != record["data_layer_sha256"]
        record["verdicts"] = verdicts(prepares, record["rate_comparison"], record["loader_local"], record["loader_s3"], sizes)
        record["workdir"] = str(workdir) if args.keep else None
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        log(f"record: {args.out}")
    print_summary(record, Console(width=max(Console().width, 110)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
