"""``preftune train | eval | demo | iterate | report``: parse -> validate -> build -> run. Errors the user can
fix are one line."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .config import Config, ConfigError, help_lines
from .run_folder import RunFolder

USAGE = """usage: preftune COMMAND [--config run.yaml] [--section.key VALUE ...]

commands:
  train   DPO-train a model on a preference dataset, checkpoint, resume, export <output_dir>/final
  eval    loss, reward accuracy and margins of a model against a reference on data.eval
  demo    DPO-train SmolLM2-135M on Rotten Tomatoes reviews (downloads ~100 MB once), write report.html;
          `demo --toy`: a tiny random model on a generated task, no download
  iterate iterative DPO: rounds of sampling, scoring with iterate.reward, pairing best/worst, training;
          `iterate --demo`: SmolLM2-135M with VADER sentiment as the reward on movie-review prompts
  report  `report RUN [RUN ...] [--output PATH]`: one HTML page of the runs' curves, settings and data

`preftune train --help` lists every configuration key with its default."""

REPORT_USAGE = """usage: preftune report RUN [RUN ...] [--output PATH]

Writes one HTML page (default <first RUN>/report.html; its PNG plots beside it) from each RUN folder's
metrics.jsonl, config.yaml and data_report.json: loss, accuracy, margins, rewards, log-probs, learning rate
and gradient norm over steps (training and held-out in the same plot, runs overlaid), final metrics, the
settings that differ between the runs (all of them for one run) and each run's data report. Needs matplotlib."""

COMMANDS = ("train", "eval", "demo", "iterate", "report")


def _print_help(command: str) -> None:
    print(f"usage: preftune {command} [--config run.yaml] [--section.key VALUE ...]\n\nconfiguration keys:")
    print("\n".join(help_lines(command)))


def _report(argv: list[str]) -> int:
    """``preftune report RUN [RUN ...] [--output PATH]`` (also ``--output=PATH``)."""
    from .training.report import write_run_report

    runs: list[str] = []
    output: str | None = None
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag == "--output":
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError("--output: missing value")
                i += 1
                value = argv[i]
            output = value
        elif argv[i].startswith("-"):
            raise ConfigError(f"unknown option {flag} for report; see preftune report --help")
        else:
            runs.append(argv[i])
        i += 1
    if not runs:
        raise ConfigError("report: give at least one run folder: preftune report RUN [RUN ...]")
    print(f"report: {write_run_report(runs, output)}")
    return 0


def run(argv: list[str]) -> int:
    # The deepspeed launcher prepends --local_rank=N; LOCAL_RANK in the environment says the same.
    argv = [a for a in argv if not a.startswith(("--local_rank=", "--local-rank="))]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise ConfigError(f"unknown command {command!r}; choose {', '.join(COMMANDS[:-1])} or {COMMANDS[-1]}")
    if "-h" in rest or "--help" in rest:
        if command == "report":
            print(REPORT_USAGE)
        else:
            _print_help(command)
        return 0
    if command == "report":
        return _report(rest)
    if command == "demo":
        from .showcase.toy_demo import run_demo

        return run_demo(rest)
    if command == "iterate" and "--demo" in rest:
        from .showcase.iterate_demo import run_iterate_demo

        return run_iterate_demo([a for a in rest if a != "--demo"])
    if command == "iterate":
        from .iterate import run_iterate
        from .validate import validated_config

        run_iterate(validated_config(rest))
        return 0
    return _train(rest) if command == "train" else _evaluate(rest)


def _train(argv: list[str]) -> int:
    from .training import runner
    from .training.summary import run_summary
    from .validate import validated_config

    cfg = validated_config(argv)
    started = time.perf_counter()
    runner.train(cfg)
    if _is_main():
        print(run_summary(Path(cfg.output_dir), time.perf_counter() - started))
    return 0


def _evaluate(argv: list[str]) -> int:
    from .training import runner
    from .validate import validated_config

    cfg = validated_config(argv, training=False)
    metrics = runner.evaluate(cfg)
    if _is_main():
        run = RunFolder(Path(cfg.output_dir))
        path = run.eval_metrics
        path.write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics, indent=2))
        default = (
            " (the default output_dir; --output_dir sets another)"
            if cfg.output_dir == Config().output_dir
            else ""
        )
        print(f"wrote {path} and {run.data_report}{default}")
    return 0


def _is_main() -> bool:
    from .strategy.launch import launched_rank

    return launched_rank() == 0  # under torchrun only rank 0 reports


def _exit_now_under_torchrun(code: int) -> int:
    """Under torchrun, leave without interpreter teardown: gloo's threads can abort the process there
    ("terminate called without an active exception", seen in about 1 run in 3 on CPU) after the work is done."""
    from .strategy.launch import launched_world_size

    if launched_world_size() > 1:
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
    except BrokenPipeError:
        # The reader went away (`preftune eval --help | head -3`): stop quietly, as other tools do; stdout goes
        # to devnull so the interpreter's final flush cannot raise the same error again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE
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
