"""composerlite.models: the GPT-2 family (gpt2.py) and what Kaplan's scaling law expects of it (scaling.py)."""

from .gpt2 import FAMILY, ModelSpec, Recipe, build_model, count_parameters, flops_per_token, get_spec
from .scaling import KAPLAN, KaplanConstants, Proposal, predicted_loss, predicted_ppl, propose

__all__ = [
    "FAMILY", "ModelSpec", "Recipe", "build_model", "count_parameters", "flops_per_token", "get_spec",
    "KAPLAN", "KaplanConstants", "Proposal", "predicted_loss", "predicted_ppl", "propose",
]
