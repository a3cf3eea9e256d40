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
