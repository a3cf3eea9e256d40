"""Data recipes: name -> function turning the raw records of one file into pair dicts.

Each recipe is ``recipe(records, log, **options) -> Iterator[dict]`` (see ``pipeline.data.recipes.base``);
``pipeline.data.prepare.prepare`` reads the files, runs the recipe, checks, splits and writes the pairs.
"""

from __future__ import annotations

from pipeline.data.recipes.base import Recipe
from pipeline.data.recipes.dsp import dsp
from pipeline.data.recipes.generic import generic
from pipeline.data.recipes.helpsteer2 import helpsteer2
from pipeline.data.recipes.hh import hh_relabeled, hh_rlhf
from pipeline.data.recipes.pandalm import pandalm
from pipeline.data.recipes.rpr import rpr

RECIPES: dict[str, Recipe] = {
    "generic": generic,
    "hh-rlhf": hh_rlhf,
    "hh-relabeled": hh_relabeled,
    "dsp": dsp,
    "pandalm": pandalm,
    "helpsteer2": helpsteer2,
    "rpr": rpr,
}

__all__ = ["RECIPES"]
