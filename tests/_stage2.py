"""Shared helpers of the Stage-2 / scoring tests (test_route, test_profiles, test_score): no model anywhere.

``AttrBackend`` reads the numbers written into each text: a response "... attrs a0 a1 a2" gets (a0, a1, a2) in
its first three coordinates, a context "criterion for gK" a one-hot of K (coordinates 3..5), a prompt marker
"topic tK" a one-hot of K (coordinates 12..14), every text a small hash-seeded noise vector in coordinates 6..11.
Group g0 prefers high a0, g1 low a0, g2 high a1: one head cannot serve all groups (and a mixture with a gate that
cannot tell the groups apart cannot learn opposite heads). Stage-1 data carries the group in its prompts
(``topic=True``) so the heads specialise; user data has neutral prompts ("question <id>") and the group only in
the context, so a prompt-reading Stage-1 gate is blind on it and a router on context+prompt is not.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from conftest import PlainTextBackend

DIM = 15
GROUPS = ("g0", "g1", "g2")
DIRECTIONS = {"g0": np.array([1.0, 0.0, 0.0]), "g1": np.array([-1.0, 0.0, 0.0]), "g2": np.array([0.0, 1.0, 0.0])}


class AttrBackend(PlainTextBackend):
    """Backend protocol stand-in; ``calls`` records every ``embed`` input list, ``closed`` counts close()."""

    name = "fake-attrs"
    dim, max_length, chunk_size = DIM, 10_000, 256

    def __init__(self, tag: str = "v1"):
        self.tag = tag
        self.calls: list[list[str]] = []
        self.closed = 0

    @property
    def embedded(self) -> list[str]:
        return [t for c in self.calls for t in c]

    def fingerprint(self) -> dict:
        return {
            "backend": self.name,
            "model": "attrs",
            "tag": self.tag,
            "dim": DIM,
            "max_length": self.max_length,
            "chat_template": None,
        }

    @staticmethod
    def vector(t: str) -> np.ndarray:
        out = np.zeros(DIM, dtype=np.float32)
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
        out[6:12] = 0.2 * np.random.default_rng(seed).standard_normal(6)
        m = re.search(r"attrs (\S+) (\S+) (\S+)", t)
        if m:
            out[:3] = [float(x) for x in m.groups()]
        m = re.search(r"criterion for g(\d)", t)
        if m:
            out[3 + int(m.group(1))] = 2.0
        m = re.search(r"topic t(\d)", t)
        if m:
            out[12 + int(m.group(1))] = 2.0
        return out

    def embed(self, inputs):
        self.calls.append(list(inputs))
        return np.stack([self.vector(t) for t in inputs]) if inputs else np.empty((0, DIM), np.float32)

    def close(self) -> None:
        self.closed += 1


def synthetic_rows(
    n_per_group: int = 120,
    test_frac: float = 0.35,
    seed: int = 0,
    groups=GROUPS,
    with_context: bool = True,
    with_group: bool = True,
    prefix: str = "",
    split: str | None = None,
    topic: bool = False,
) -> list[dict]:
    """Pair rows of groups with disagreeing preferences (BT label noise), contexts 'criterion for gK' (the group
    column empty without ``with_group``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in groups:
        for i in range(n_per_group):
            a, b = rng.standard_normal(3), rng.standard_normal(3)
            u = DIRECTIONS[g] @ (a - b) * 3.0
            first = rng.random() < 1.0 / (1.0 + math.exp(-u))
            ch, rj = (a, b) if first else (b, a)
            pid = f"{prefix}{g}-{i}"
            rows.append(
                {
                    "pair_id": pid,
                    "prompt": [{"role": "user", "content": f"question {pid}" + (f" topic t{g[1:]}" if topic else "")}],
                    "chosen": f"answer {pid} one attrs {ch[0]:.4f} {ch[1]:.4f} {ch[2]:.4f}",
                    "rejected": f"answer {pid} two attrs {rj[0]:.4f} {rj[1]:.4f} {rj[2]:.4f}",
                    "group": g if with_group else None,
                    "context": f"criterion for {g}" if with_context else None,
                    "split": split or ("test" if i < test_frac * n_per_group else "train"),
                    "source": "synthetic",
                }
            )
    return rows


def write_table(rows: list[dict], path: Path) -> Path:
    from pipeline.data.schema import pairs_to_table, write_pairs

    return write_pairs(pairs_to_table(rows), path)


def write_jsonl(rows: list[dict], path: Path, drop=("pair_id", "source")) -> Path:
    """Rows as a raw JSONL user file (columns prompt/chosen/rejected/group/context/split)."""
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({k: v for k, v in r.items() if k not in drop and v is not None}) + "\n")
    return path


def make_run(root: Path, rows: list[dict], name: str, tag: str = "v1", cache: Path | None = None) -> Path:
    """Embed ``rows`` with AttrBackend(tag) into the run folder ``root/name`` (cache ``cache``, default
    ``root/cache``); the pair table is ``root/<name>_pairs.parquet``."""
    from pipeline.embed.embed import embed_pairs

    pairs = write_table(rows, root / f"{name}_pairs.parquet")
    embed_pairs(pairs, root / name, AttrBackend(tag), cache_dir=cache or root / "cache", log=lambda m: None)
    return root / name


def make_bundle(
    root: Path, rows: list[dict], *, gate_input: str = "prompt", k: int = 3, name: str = "bundle", **fit_kw
) -> Path:
    """Embed ``rows`` with AttrBackend into ``root/cache`` (run ``root/<name>_run``) and fit a bundle at
    ``root/name``."""
    from pipeline.fit.fit import fit_run

    make_run(root, rows, f"{name}_run")
    params = dict(alpha=0.0, l2=1e-3, n_init=2, max_iter=60, random_state=0) | fit_kw
    fit_run(root / f"{name}_run", k=k, gate_input=gate_input, out=root / name, **params)
    return root / name


def patch_backend(monkeypatch, tag: str = "v1") -> list:
    """Make ``pipeline.embed.backends.get_backend`` build AttrBackend(tag); returns the list of backends built."""
    import pipeline.embed.backends

    built = []

    def get_backend(name, model=None, **kw):
        be = AttrBackend(tag)
        be.options = kw  # what the caller asked for (device, truncation, ...)
        built.append(be)
        return be

    monkeypatch.setattr(pipeline.embed.backends, "get_backend", get_backend)
    return built


def rendered_texts(rows: list[dict]) -> set:
    """Every exact model input AttrBackend would embed for these pair rows."""
    from pipeline.data.schema import pairs_to_table
    from pipeline.embed.embed import render_inputs

    inputs = render_inputs(pairs_to_table(rows), AttrBackend())
    return {t for v in inputs.values() for t in v if t is not None}


def run_cli(monkeypatch, capsys, *args):
    """Run `micro ARGS` in-process through cli.main(); returns (exit code, stdout, stderr)."""
    import cli

    monkeypatch.setattr(sys, "argv", ["micro", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def route_cli(monkeypatch, capsys, bundle, user_data, out, *options):
    """`micro route BUNDLE --user-data USER_DATA --out OUT OPTIONS...` in-process (see :func:`run_cli`)."""
    return run_cli(monkeypatch, capsys, "route", bundle, "--user-data", user_data, "--out", out, *options)


def score_cli(monkeypatch, capsys, bundle, rows, out, *options):
    """`micro score BUNDLE --input ROWS --out OUT OPTIONS...` in-process (see :func:`run_cli`)."""
    return run_cli(monkeypatch, capsys, "score", bundle, "--input", rows, "--out", out, *options)
