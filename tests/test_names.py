"""Names from the data (groups, users, file names): printed literally by every command, never as rich markup or
terminal control codes (pipeline.errors.printable / shown); pairs without a group never merge with a real group
named 'all' (pipeline.core.run.group_labels)."""

from __future__ import annotations

import pytest

from _stage2 import make_run, patch_backend, run_cli, synthetic_rows, write_jsonl

ESC = "\x1b[31mred\x1b]0;title\x07"
NAMES = {"g0": "[/bold]", "g1": "[red]x", "g2": ESC}


def renamed(rows):
    return [dict(r, group=NAMES[r["group"]]) for r in rows]


def test_printable_escapes_every_control_character():
    from pipeline.errors import printable, shown

    assert printable(ESC) == "\\x1b[31mred\\x1b]0;title\\x07"
    assert printable("a\rb\x08c\x9bd\x7f\ttab\nline") == "a\\x0db\\x08c\\x9bd\\x7f\ttab\nline"
    assert printable("a\tb\nc", lines=False) == "a\\x09b\\x0ac"
    assert printable("plain [red]x ünïcode") == "plain [red]x ünïcode"
    assert shown("[/bold]\\").plain == "[/bold]\\" and shown(ESC).plain == printable(ESC)


@pytest.fixture
def named(tmp_path, monkeypatch):
    """A Stage-1 run whose groups are named like markup and terminal codes, and user data with the same names."""
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps narrow columns: keep every name on one line
    run = make_run(tmp_path, renamed(synthetic_rows(n_per_group=24, topic=True, seed=1)), "run")
    write_jsonl(renamed(synthetic_rows(n_per_group=12, seed=2, prefix="u")), tmp_path / "user.jsonl")
    patch_backend(monkeypatch)
    return tmp_path, run


def assert_literal(out: str, names=NAMES.values()):
    from pipeline.errors import printable

    assert "\x1b" not in out and "\x07" not in out, "a terminal code from the data reached the output"
    for name in names:
        assert printable(name) in out, f"{name!r} not printed literally"


def test_fit_eval_route_print_names_literally(named, monkeypatch, capsys):
    root, run = named
    code, out, err = run_cli(monkeypatch, capsys, "fit", run, "--out", root / "b", "--k", "3", "--n-init", "1")
    assert code == 0, err
    assert_literal(out + err)
    code, out, err = run_cli(monkeypatch, capsys, "eval", root / "b", run, "--seeds", "1", "--budgets", "8")
    assert code == 0, err
    assert_literal(out + err)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "route",
        root / "b",
        "--user-data",
        root / "user.jsonl",
        "--out",
        root / "ro",
        "--seeds",
        "1",
    )
    assert code == 0, err
    assert_literal(out + err)
    assert (root / "ro" / "model.json").is_file() and len(list((root / "ro" / "users").glob("*.json"))) == 3


def test_error_lines_escape_names_from_the_data(named, monkeypatch, capsys):
    root, run = named
    code, out, err = run_cli(monkeypatch, capsys, "fit", run, "--out", root / "b", "--k", "3", "--n-init", "1")
    assert code == 0, err
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "route",
        root / "b",
        "--user-data",
        root / "user.jsonl",
        "--out",
        root / "p",
        "--user",
        "\x1b[2Jnobody",
    )
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ")
    assert "\x1b" not in err and "\\x1b[2Jnobody" in err


def test_a_real_group_all_is_never_merged_with_the_ungrouped_pairs(tmp_path, monkeypatch, capsys):
    """Pairs without a group and a real group 'all': two groups (the ungrouped pairs renamed, with a warning),
    in Run.from_arrays, Run.load (fit's report) and the user data of route --user."""
    import numpy as np

    from pipeline.core.run import Run

    rows = synthetic_rows(n_per_group=24, topic=True, seed=1)
    rows = [dict(r, group={"g0": "all", "g1": None}.get(r["group"], r["group"])) for r in rows]
    with pytest.warns(UserWarning, match="pairs without a group are named 'all \\(ungrouped\\)'"):
        arr = Run.from_arrays(
            np.ones((len(rows), 2)), np.ones((len(rows), 2)), ["train"] * len(rows), group=[r["group"] for r in rows]
        )
    assert arr.group_names == ["all", "all (ungrouped)", "g2"]
    assert [int((arr.groups == g).sum()) for g in arr.group_names] == [24, 24, 24]
    with pytest.warns(UserWarning, match="named 'all \\(ungrouped\\)'"):
        run = make_run(tmp_path, rows, "run")
        loaded = Run.load(run)
    assert loaded.group_names == ["all", "all (ungrouped)", "g2"]
    assert sorted(loaded.groups[loaded.groups != "g2"].tolist()) == ["all"] * 24 + ["all (ungrouped)"] * 24
    monkeypatch.setenv("COLUMNS", "300")
    code, out, err = run_cli(monkeypatch, capsys, "fit", run, "--out", tmp_path / "b", "--k", "3", "--n-init", "1")
    assert code == 0, err
    assert "warning: pairs without a group are named 'all (ungrouped)'" in err
    assert "all (n=" in err and "all (ungrouped) (n=" in err
    write_jsonl(rows, tmp_path / "user.jsonl")
    patch_backend(monkeypatch)
    args = ["route", tmp_path / "b", "--user-data", tmp_path / "user.jsonl", "--out", tmp_path / "p", "--seeds", "1"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--user", "all")
    assert code == 0, err
    assert "user data: 24 pairs" in err  # the real group 'all' alone, not the 24 ungrouped pairs with it


def test_file_names_with_markup_print_literally(tmp_path, monkeypatch, capsys):
    """Folder names are data too: `[red]` in an output folder is printed as it is by embed and fit."""
    from _stage2 import write_table

    pairs = write_table(synthetic_rows(n_per_group=10, topic=True), tmp_path / "pairs.parquet")
    patch_backend(monkeypatch)
    out = tmp_path / "[red]run"
    code, _, err = run_cli(monkeypatch, capsys, "embed", pairs, "--out", out, "--cache-dir", tmp_path / "c")
    assert code == 0, err
    assert f"run folder: {out}" in err
    code, _, err = run_cli(monkeypatch, capsys, "fit", out, "--out", tmp_path / "[b]m", "--k", "2", "--n-init", "1")
    assert code == 0, err
    assert f"bundle: {tmp_path / '[b]m'}" in "".join(err.split("\n"))
