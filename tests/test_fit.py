"""pipeline/fit.py through `micro fit`: what the closing report says about which split it describes."""

from __future__ import annotations

from _stage2 import AttrBackend, run_cli, synthetic_rows, write_table


def test_head_table_names_the_train_split_when_there_is_no_test_split(tmp_path, monkeypatch, capsys):
    from pipeline.embed.embed import embed_pairs

    pairs = write_table(synthetic_rows(n_per_group=20, topic=True, split="train"), tmp_path / "pairs.parquet")
    embed_pairs(pairs, tmp_path / "run", AttrBackend(), cache_dir=tmp_path / "cache", log=lambda m: None)
    code, _, err = run_cli(monkeypatch, capsys, "fit", tmp_path / "run", "--k", "2", "--n-init", "1", "--quiet")
    assert code == 0, err
    text = " ".join(err.split())  # rich wraps the table title
    assert "per group (train split)" in text and "(test split)" not in text


def test_pairs_with_identical_features_are_counted_and_left_out(tmp_path, monkeypatch, capsys):
    """Rejected = chosen + trailing spaces, embedded by a backend that ignores trailing whitespace (as tokenizers
    do): their difference vector is zero. The fit leaves them out and says how many (was a ZeroDivisionError
    when every pair was so; see tests/bad_inputs/test_bad_model_json.py)."""
    import json

    from _stage2 import make_run

    rows = synthetic_rows(n_per_group=20, topic=True, split="train")
    same = [0, 5, 21, 40, 41]
    for i in same:
        rows[i]["rejected"] = rows[i]["chosen"] + "  "
    plain = AttrBackend.vector
    monkeypatch.setattr(AttrBackend, "vector", staticmethod(lambda t: plain(t.rstrip())))
    run = make_run(tmp_path, rows, "run")
    code, _, err = run_cli(monkeypatch, capsys, "fit", run, "--out", tmp_path / "b", "--k", "2", "--n-init", "1")
    assert code == 0, err
    assert "note: 5 pairs with identical features" in " ".join(err.split())
    assert json.loads((tmp_path / "b" / "model.json").read_text())["fitted"]["n_identical_"] == len(same)
