"""The tokenised store: what load_groups gives comes back id for id from the memory-mapped file; the key moves
with every input that changes ids and with nothing else; a build killed mid-write is never read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from preftune.config import load_config
from preftune.data import load_groups
from preftune.data.store import GroupStore, is_complete, source_fingerprint, store_key, write_store
from preftune.model.loading import load_tokenizer
from toy_env import toy_workspace, write_jsonl


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("store")
    paths = toy_workspace(root, n_train=24, n_eval=4)
    rows = [{"prompt": f"Question {i}: how many?", "responses": [" one", " two words", " three more words"][: 2 + i % 2],
             "scores": [0.5, 1.0, -1.0][: 2 + i % 2]} for i in range(12)]  # fmt: skip
    paths["groups"] = str(write_jsonl(root / "groups.jsonl", rows))
    return paths


def _groups(ws: dict[str, str], source: str, **overrides: object):
    cfg = load_config(None, {"model.name_or_path": ws["model"], "data.train": source, **overrides})
    tokenizer = load_tokenizer(ws["model"])
    groups, report = load_groups(cfg.data, tokenizer, "train", cfg.seed)
    return cfg, tokenizer, groups, report


@pytest.mark.parametrize("source", ["train", "groups"])
def test_a_store_gives_back_every_group_id_for_id(ws: dict[str, str], tmp_path: Path, source: str) -> None:
    cfg, tokenizer, groups, report = _groups(ws, ws[source])
    key = store_key(cfg.data, "train", cfg.data.train, tokenizer, cfg.seed)
    # 5 rows per record batch: several batches, and a last one that is short.
    folder = write_store(tmp_path, key, iter(groups), report.to_dict(), rows_per_batch=5)
    store = GroupStore(folder)
    assert len(store) == len(groups) > 5 and store.meta["rows"] == len(groups)
    assert [store[i] for i in range(len(store))] == groups
    assert store[-1] == groups[-1] and store[2:4] == groups[2:4]
    want = [len(g.prompt_ids) + sum(len(r) for r in g.responses) for g in groups]
    assert store.lengths().tolist() == want
    assert store.meta["report"] == report.to_dict()
    with pytest.raises(IndexError):
        store[len(groups)]


def test_the_key_moves_with_what_changes_ids_only(ws: dict[str, str], tmp_path: Path) -> None:
    cfg, tokenizer, _, _ = _groups(ws, ws["train"])
    base = store_key(cfg.data, "train", cfg.data.train, tokenizer, cfg.seed)
    assert store_key(cfg.data, "train", cfg.data.train, tokenizer, cfg.seed) == base  # deterministic
    for changed in ({"data.max_len": 40}, {"data.prompt_key": "question"}, {"data.max_samples": 3}):
        other = load_config(None, {"model.name_or_path": ws["model"], "data.train": ws["train"], **changed})
        assert store_key(other.data, "train", other.data.train, tokenizer, other.seed) != base, changed
    for same in ({"data.shuffle": False}, {"data.report_examples": 1}):
        other = load_config(None, {"model.name_or_path": ws["model"], "data.train": ws["train"], **same})
        assert store_key(other.data, "train", other.data.train, tokenizer, other.seed) == base, same
    assert store_key(cfg.data, "eval", cfg.data.train, tokenizer, cfg.seed) != base
    assert store_key(cfg.data, "train", cfg.data.train, tokenizer, cfg.seed + 1) != base
    tokenizer.add_tokens(["<new-token>"])
    assert store_key(cfg.data, "train", cfg.data.train, tokenizer, cfg.seed) != base


def test_a_source_edit_changes_its_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    first = source_fingerprint(path)
    assert source_fingerprint(path) == first
    stat = path.stat()
    path.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "b"}) + "\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same time: the sampled bytes differ
    assert source_fingerprint(path) != first


def test_a_build_killed_mid_write_is_never_read(ws: dict[str, str], tmp_path: Path) -> None:
    cfg, tokenizer, groups, report = _groups(ws, ws["groups"])
    key = store_key(cfg.data, "train", cfg.data.train, tokenizer, cfg.seed)

    def dies_halfway():
        yield from groups[:3]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path, key, dies_halfway(), report.to_dict(), rows_per_batch=2)
    assert not is_complete(tmp_path / key[:32], key) and list(tmp_path.iterdir()) == []
    folder = write_store(tmp_path, key, groups, report.to_dict())
    assert is_complete(folder, key) and not is_complete(folder, "another key")
    # A second builder of the same key keeps the first's store and leaves no temporary folder behind.
    assert write_store(tmp_path, key, groups, report.to_dict()) == folder
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    assert list(GroupStore(folder)) == groups
