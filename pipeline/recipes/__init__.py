"""Data recipes: name -> function turning the raw records of one file into pair dicts.

Each recipe is ``recipe(records, log, **options) -> Iterator[dict]`` (see ``pipeline.recipes.base``);
``pipeline.prepare.prepare`` reads the files, runs the recipe, checks, splits and writes the pairs.
"""
from __future__ import annotations

from pipeline.recipes.base import Recipe
from pipeline.recipes.dsp import dsp
from pipeline.recipes.generic import generic
from pipeline.recipes.helpsteer2 import helpsteer2
from pipeline.recipes.hh import hh_relabeled, hh_rlhf
from pipeline.recipes.pandalm import pandalm
from pipeline.recipes.rpr import rpr

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
