"""composerlite.models: the GPT-2 family (family.py), its builder (gpt2.py) and what Kaplan's
scaling law expects of it (scaling.py)."""

from composerlite.lazy import lazy_attributes

from .family import FAMILY, ModelSpec, Recipe, get_spec

# Imported on first use: they import torch and transformers, which checking a model name does not need.
_LAZY = {
    **dict.fromkeys(["build_model", "count_parameters", "flops_per_token"], "composerlite.models.gpt2"),
    **dict.fromkeys(["KAPLAN", "KaplanConstants", "Proposal", "predicted_loss", "predicted_ppl", "propose"],
                    "composerlite.models.scaling"),
}
__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "FAMILY", "ModelSpec", "Recipe", "build_model", "count_parameters", "flops_per_token", "get_spec",
    "KAPLAN", "KaplanConstants", "Proposal", "predicted_loss", "predicted_ppl", "propose",
]
