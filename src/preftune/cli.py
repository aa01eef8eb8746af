"""``preftune train | eval | demo``: parse -> validate -> build -> run. Errors the user can fix are one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .config import ConfigError, config_from_args, help_lines

USAGE = """usage: preftune COMMAND [--config run.yaml] [--section.key VALUE ...]

commands:
  train   DPO-train a model on a preference dataset, checkpoint, resume, export <output_dir>/final
  eval    loss, reward accuracy and margins of a model against a reference on data.eval
  demo    DPO-train SmolLM2-135M on Rotten Tomatoes reviews (downloads ~100 MB once), write report.html;
          `demo --toy`: a tiny random model on a generated task, no download
  iterate iterative DPO: rounds of sampling, scoring with iterate.reward, pairing best/worst, training;
          `iterate --demo`: SmolLM2-135M with VADER sentiment as the reward on movie-review prompts

`preftune train --help` lists every configuration key with its default."""


def _print_help(command: str) -> None:
    print(f"usage: preftune {command} [--config run.yaml] [--section.key VALUE ...]\n\nconfiguration keys:")
    print("\n".join(help_lines()))


def run(argv: list[str]) -> int:
    # The deepspeed launcher prepends --local_rank=N; LOCAL_RANK in the environment says the same.
    argv = [a for a in argv if not a.startswith(("--local_rank=", "--local-rank="))]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in ("train", "eval", "demo", "iterate"):
        raise ConfigError(f"unknown command {command!r}; choose train, eval, demo or iterate")
    if "-h" in rest or "--help" in rest:
        _print_help(command)
        return 0
    if command == "demo":
        from .showcase.toy_demo import run_demo

        return run_demo(rest)
    if command == "iterate" and "--demo" in rest:
        from .showcase.iterate_demo import run_iterate_demo

        return run_iterate_demo([a for a in rest if a != "--demo"])
    if command == "iterate":
        from .iterate import run_iterate

        run_iterate(config_from_args(rest))
        return 0
    from .training import runner

    cfg = config_from_args(rest)
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    if command == "train":
        final = runner.train(cfg)
        if is_main:
            print(f"done: Hugging Face model written to {final}")
    else:
        metrics = runner.evaluate(cfg)
        if is_main:
            print(json.dumps(metrics, indent=2))
            Path(cfg.output_dir, "eval_metrics.json").write_text(json.dumps(metrics, indent=2))
    return 0


def _exit_now_under_torchrun(code: int) -> int:
    """Under torchrun, leave without interpreter teardown: gloo's threads can abort the process there
    ("terminate called without an active exception", seen in about 1 run in 3 on CPU) after the work is done."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    from .allocator import keep_freed_memory
    from .data import DataError
    from .errors import EXIT_BAD_INPUT, RunStopped
    from .strategy.deepspeed_strategy import default_cpu_accelerator

    keep_freed_memory()
    default_cpu_accelerator()  # before transformers can import deepspeed (see there)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file load/save bars drown the training progress bar

    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except (ConfigError, DataError) as exc:
        print(f"preftune: error: {exc}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except RunStopped as exc:
        print(f"preftune: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("preftune: interrupted", file=sys.stderr)
        code = 130
    return _exit_now_under_torchrun(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
