"""The FP8 speculator: predicts every layer's K/V for speculative KV coding (see model.py, recipe.py)."""

from .model import SeqInput, Speculator, SpeculatorPredictor
from .quantize import create_quantized_state_dict
from .recipe import RECIPES, Recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "SeqInput", "Speculator", "SpeculatorPredictor", "create_quantized_state_dict",
           "get_recipe"]
