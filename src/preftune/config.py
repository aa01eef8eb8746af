"""Typed, nested run configuration: YAML file + dotted command-line overrides, validated before any model loads.

Every leaf is addressable as ``section.key`` (``--loss.beta 0.1``); top-level keys have no section
(``--output_dir runs/x``). Errors are :class:`ConfigError` with a one-line message naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError as ConfigError  # raised by validation; defined lower so the plan can raise it
from .losses import LOSSES, get_loss, loss_terms
from .reference.plan import plan_reference


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its help text (shown by ``preftune train --help``)."""
    if isinstance(default, list):
        items: list[Any] = list(default)
        return field(default_factory=items.copy, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name_or_path: str = _f("", "policy model: a Hugging Face folder or Hub name")
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "parameter dtype (float32 on CPU)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    attn_implementation: str = _f("sdpa", "transformers attention backend (sdpa, eager, flash_attention_2)")
    trust_remote_code: bool = _f(False, "allow model code from the model folder")


@dataclass
class RefConfig:
    name_or_path: str | None = _f(None, "reference model; default: the policy's own weights loaded again")
    offload: bool = _f(False, "keep the reference whole on CPU (ddp / fsdp2)")
    precompute: bool = _f(
        False,
        "score every train and eval response (pairs or prompt groups) with the reference once before "
        "training, cache them on disk, and free the reference model during training",
    )
    cache_dir: str | None = _f(
        None, "folder of the reference log-prob cache (default <output_dir>/ref_cache; may be shared by runs)"
    )
    sync_steps: int = _f(
        0,
        "TR-DPO: every N optimizer steps the reference becomes sync_alpha x policy + (1 - sync_alpha) x reference "
        "(0 = off). A frozen reference copy is mixed in place; with LoRA each adapted layer keeps a frozen dense "
        "delta (one extra weight matrix per adapted layer, in the model's dtype) that only the reference adds",
    )
    sync_alpha: float = _f(
        0.6, "TR-DPO mixing weight of the policy, in (0, 1]; 1 copies the policy (TRL's 0.6)"
    )


@dataclass
class DataConfig:
    train: list[str] = _f(
        [], "training sources: .jsonl/.json/.parquet/.csv files, save_to_disk folders or Hub names"
    )
    train_probs: list[float] | None = _f(
        None, "mixing probabilities for the train sources (default: proportional)"
    )
    train_split: str = _f("train", "split to read from folders / Hub datasets for training")
    eval: list[str] = _f([], "evaluation sources (same forms as data.train)")
    eval_split: str = _f("test", "split to read from folders / Hub datasets for evaluation")
    max_samples: int | None = _f(None, "keep at most this many training rows after mixing")
    eval_max_samples: int | None = _f(None, "keep at most this many evaluation rows")
    prompt_key: str = _f("prompt", "row key holding the prompt (string or message list)")
    chosen_key: str = _f("chosen", "row key holding the preferred response")
    rejected_key: str = _f("rejected", "row key holding the dispreferred response (or a list of them)")
    groups: bool = _f(
        False,
        "train and evaluate on prompt groups (a prompt with K scored responses; pair rows become groups of two): "
        "each response scored once, each prompt laid out once by prefix_shared, the loss over the whole group",
    )
    responses_key: str = _f("responses", "row key holding a prompt's K responses (strings or message lists)")
    scores_key: str = _f("scores", "row key holding one score per response (higher is better; ties allowed)")
    max_responses: int | None = _f(
        None,
        "keep at most this many responses per prompt: the best, the worst, and the rest spread evenly by "
        "score rank between them (ranks i(K-1)/(max-1), i = 0..max-1, rounded half up; tied scores in row order)",
    )
    input_template: str | None = _f(None, "format for plain-string prompts; '{}' marks where the prompt goes")
    apply_chat_template: bool = _f(False, "render plain-string prompts as a user turn with the chat template")
    chat_template: str | None = _f(None, "Jinja chat template overriding the tokenizer's own")
    max_len: int = _f(1024, "maximum tokens of prompt + one response")
    max_prompt_len: int | None = _f(None, "optional cap on prompt tokens (cut from the left)")
    truncation: Literal["prompt_left", "response_right", "drop"] = _f(
        "prompt_left",
        "over max_len: prompt_left cuts the prompt from the left, then responses from the right; "
        "response_right keeps the whole prompt; drop discards the row",
    )
    report_examples: int = _f(5, "rows quoted per drop reason in data_report.json")
    cache_dir: str | None = _f(
        None,
        "folder of tokenised stores (default <output_dir>/data_cache): a split is tokenised once into a "
        "memory-mapped store named by its key (sources' content, tokenizer, data settings) and reused by "
        "every later run, resume, eval or iterate round with that key; share one folder between runs",
    )
    num_proc: int | None = _f(
        None, "worker processes that tokenise a store being built (default: one per CPU core)"
    )
    shuffle: bool = _f(True, "shuffle training pairs each epoch (seeded, resumable)")
    group_by_length: bool = _f(
        False,
        "batch pairs of similar length (sorted within windows of 16 batches, windows' batches in seeded order): "
        "less padding for the padded layout; deterministic and resumable",
    )


@dataclass
class LossConfig:
    type: str = _f(
        "sigmoid",
        "loss variant, a name in preftune.losses.LOSSES: " + ", ".join(LOSSES) + "; or a comma-separated "
        "mixture of pairwise ones (MPO: sigmoid,bco_pair,sft), their weighted sum (loss.weights), each term "
        "logged as loss/<name>. sft is TRL's: the chosen tokens' NLL averaged over all of the micro-batch's "
        "chosen tokens (long responses weigh more); loss.nll_coef instead adds each pair's own per-token mean",
    )
    weights: list[float] | None = _f(
        None, "weight of each loss.type term of a mixture, in order (default: 1 each), e.g. 0.8,0.2,1.0"
    )
    f_divergence: Literal["reverse_kl", "forward_kl", "js", "alpha"] = _f(
        "reverse_kl",
        "f-DPO (Wang et al. 2023): each response's log-ratio u = log(pi/pi_ref) becomes f'(e^u) in the loss: "
        "reverse_kl = u (plain DPO), forward_kl = 1 - e^-u, js = log 2 + log sigmoid(u), alpha = "
        "(e^((a-1)u) - 1)/(a-1) with a = loss.f_alpha (TRL's js_divergence / alpha_divergence); rewards "
        "stay beta u. For sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop and sft, as in TRL",
    )
    f_alpha: float = _f(
        0.5, "the a of loss.f_divergence alpha (TRL's f_alpha_divergence_coef); a = 1 is reverse_kl"
    )
    beta: float = _f(0.1, "DPO temperature beta (> 0)")
    label_smoothing: float = _f(0.0, "assumed label-flip probability (cDPO / robust / exo_pair), in [0, 0.5)")
    ipo_average: bool = _f(False, "IPO on per-token average log-probs (TRL) instead of sums (OpenRLHF)")
    nll_coef: float = _f(
        0.0,
        "weight of the NLL term on chosen responses (RPO / Llama 3.1): each pair's per-token mean NLL of its "
        "chosen response; on prompt groups, of the top-scored response (the mean over ties for the top)",
    )
    aux_loss_coef: float = _f(0.0, "weight of the MoE load-balancing auxiliary loss")
    simpo_gamma: float = _f(0.5, "SimPO target reward margin gamma")
    discopop_tau: float = _f(0.05, "DiscoPOP modulation temperature tau")
    wpo: bool = _f(
        False,
        "WPO (Zhou et al. 2024), for any pairwise loss.type: each pair's loss times w = exp(a_c + a_r), a = a "
        "response's mean over its tokens of log p(token) - log sum_v p(v)^2 under the policy, no gradient "
        "through w (TRL's use_weighting); logged as wpo/weight. Over data.groups: per expanded pair",
    )
    wpo_clamp: bool = _f(
        True,
        "with loss.wpo: w = min(1, w), as the WPO authors' code and TRL 0.x; false = TRL 1.x (1.16) exactly, "
        "whose w can exceed 1",
    )
    ld_alpha: float | None = _f(
        None,
        "LD-DPO (Liu et al. 2024), in (0, 1]: a response's log-prob sums its first l tokens (l = the shorter "
        "response of its pair) plus ld_alpha times the rest, for policy and reference alike (as TRL's "
        "ld_alpha); 1 = plain DPO; token counts stay the full lengths; not with data.groups",
    )
    pairs: Literal["all", "best_vs_rest", "best_vs_worst"] = _f(
        "best_vs_worst",
        "prompt groups with a pairwise loss.type: which pairs (better, worse) of each group's responses train; "
        "all = every pair with different scores, best_vs_rest = the top-scored against each lower one, "
        "best_vs_worst = top against bottom (one pair, as pair data trains); tied scores never make a pair; "
        "listwise losses (plackett_luce, multi_negative) read the whole group and ignore this",
    )
    pair_weighting: Literal["uniform", "gap"] = _f(
        "uniform",
        "weight of each pair in its group's loss (a weighted mean over the group's pairs): uniform, or gap = "
        "the better response's score minus the worse one's",
    )


@dataclass
class OptimConfig:
    lr: float = _f(5e-7, "peak learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_betas: list[float] = _f([0.9, 0.95], "AdamW betas")
    adam_eps: float = _f(1e-8, "AdamW epsilon")
    max_norm: float = _f(1.0, "gradient clipping norm (0 disables)")
    scheduler: Literal["cosine_with_min_lr", "linear", "constant"] = _f("cosine_with_min_lr", "LR schedule")
    warmup_ratio: float = _f(0.03, "fraction of steps spent warming up")
    min_lr_ratio: float = _f(0.1, "cosine floor as a fraction of the peak LR")


@dataclass
class TrainConfig:
    micro_batch_size: int = _f(1, "pairs per forward pass per process")
    micro_batch_tokens: int = _f(
        0,
        "also cap each micro-batch at this many tokens (0 = off): a step's rows on a process are cut, in order and "
        "balanced, into micro-batches of at most this many tokens and micro_batch_size rows, each weighted by its "
        "share of the step's rows, so a step trains what and as the split by count does; tokens as the layout lays "
        "them out: padded its rectangle (sequences x the longest, padding included), packed every sequence, "
        "prefix_shared each prompt once plus its responses; a row over the budget trains alone (reported at the "
        "start); evaluation uses it too, with eval_micro_batch_size rows at most",
    )
    batch_size: int = _f(8, "pairs per optimizer step, over all processes")
    max_epochs: int = _f(1, "passes over the training data")
    max_steps: int | None = _f(None, "stop after this many optimizer steps")
    eval_steps: int | None = _f(None, "evaluate every N steps (and always at the end of each epoch)")
    eval_at_start: bool = _f(False, "also evaluate before the first step (logged as step 0)")
    logging_steps: int = _f(1, "log metrics every N steps")
    layout: Literal["auto", "padded", "packed", "prefix_shared"] = _f(
        "auto",
        "batch layout, all exact: padded; packed (no padding); prefix_shared (no padding, each prompt encoded "
        "once); auto = prefix_shared, or packed with an MoE aux loss, or padded if the model's attention "
        "cannot take a segment plan",
    )
    lm_head_chunk: int = _f(1024, "response tokens per LM-head chunk when computing log-probs")
    eval_micro_batch_size: int | None = _f(None, "pairs per evaluation forward (default: micro_batch_size)")
    max_nonfinite_steps: int = _f(5, "stop after this many steps in a row with non-finite loss or gradients")


@dataclass
class CkptConfig:
    save_steps: int | None = _f(None, "write a checkpoint every N steps")
    keep: int = _f(3, "keep the newest K checkpoints")
    resume: str = _f("auto", "auto (latest complete checkpoint in output_dir), none, or a checkpoint path")
    save_hf: bool = _f(False, "also write a Hugging Face folder in every checkpoint")
    disable: bool = _f(False, "skip resumable training-state checkpoints")


@dataclass
class LogConfig:
    progress: bool = _f(True, "show a progress bar")
    tensorboard: bool = _f(False, "write TensorBoard events to <output_dir>/tensorboard")
    wandb: bool = _f(False, "log to Weights & Biases")
    wandb_project: str = _f("preftune", "W&B project")
    wandb_mode: Literal["offline", "online"] = _f("offline", "W&B mode (offline needs no network)")
    report: bool = _f(True, "write report.html (plots, settings, data report) at the end of every train run")


@dataclass
class StrategyConfig:
    name: Literal["single", "ddp", "fsdp2", "deepspeed"] = _f(
        "single", "single process, or ddp / fsdp2 / deepspeed under torchrun (or the deepspeed launcher)"
    )
    mixed_precision: Literal["none", "bf16"] = _f("none", "fsdp2: compute in bf16, reduce gradients in fp32")
    cpu_offload: bool = _f(False, "fsdp2: keep sharded parameters and optimizer state on CPU")
    zero_stage: int | None = _f(None, "deepspeed: ZeRO stage 0-3 (default 2, or what strategy.config says)")
    offload_optimizer: bool = _f(False, "deepspeed: optimizer state on CPU")
    offload_params: bool = _f(False, "deepspeed: parameters on CPU (ZeRO-3)")
    config: str | None = _f(
        None, "deepspeed: a DeepSpeed JSON file; preftune's flags fill only what it leaves out"
    )


@dataclass
class IterateConfig:
    """``preftune iterate``: rounds of sample -> score -> pair -> DPO; the rest of the config trains each round."""

    rounds: int = _f(1, "rounds of sample, score, build pairs, train")
    prompts: str | None = _f(None, "prompt file (.jsonl/.json/.csv/.parquet) with a prompt column")
    eval_prompts: str | None = _f(
        None, "optional held-out prompt file; mean reward of each round's model on it"
    )
    prompt_key: str = _f("prompt", "column of the prompt files holding the prompt text")
    reward: str | None = _f(
        None, "reward: module:function, path/to/file.py:function, or a sequence-classification model folder"
    )
    samples_per_prompt: int = _f(4, "responses sampled per prompt (K >= 2); see iterate.pairing")
    pairing: Literal["best_worst", "listwise"] = _f(
        "best_worst",
        "what a round trains on: best_worst = one pair per prompt (its best and worst response); listwise = every "
        "scored response of the prompt as one group (sets data.groups; ties kept as ties), for a listwise "
        "loss.type or a pairwise one over loss.pairs",
    )
    min_score_gap: float = _f(0.0, "keep a pair only when best - worst reward >= this (and > 0)")
    reference: Literal["round", "original"] = _f(
        "round", "DPO reference of each round: the round's starting policy, or the original model"
    )
    max_new_tokens: int = _f(64, "generated tokens per response at most")
    temperature: float = _f(1.0, "sampling temperature (> 0: K greedy samples would all be the same)")
    top_p: float = _f(1.0, "nucleus sampling mass, in (0, 1]")
    generation_batch_size: int = _f(16, "sequences generated per batch")
    reward_batch_size: int = _f(16, "sequences per reward-model forward")
    eval_samples_per_prompt: int = _f(1, "responses sampled per eval prompt")


@dataclass
class LoraConfig:
    rank: int = _f(0, "LoRA rank (0 = full fine-tuning); the reference is then the policy with adapters off")
    alpha: float = _f(16.0, "LoRA scaling numerator: adapter output is multiplied by alpha / rank")
    dropout: float = _f(0.0, "dropout on the adapter input, in [0, 1)")
    target_modules: list[str] = _f(
        ["all-linear"], "module names to adapt, or all-linear (every linear layer but the LM head)"
    )
    export: Literal["merged", "adapter"] = _f(
        "merged", "final/HF export: merged (a plain HF model) or adapter (peft's adapter folder)"
    )


@dataclass
class Config:
    output_dir: str = _f("runs/preftune", "folder for checkpoints, metrics, reports and the final model")
    seed: int = _f(42, "random seed")
    model: ModelConfig = field(default_factory=ModelConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    log: LogConfig = field(default_factory=LogConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    iterate: IterateConfig = field(default_factory=IterateConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- reading values


def _leaf_fields(cls: type = Config, prefix: str = "") -> dict[str, tuple[type, Any, dataclasses.Field]]:
    """Map of dotted key -> (owning dataclass, resolved type, field)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, Any, dataclasses.Field]] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_fields(tp, f"{prefix}{f.name}."))  # type: ignore[arg-type]
        else:
            out[prefix + f.name] = (cls, tp, f)
    return out


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to ``tp``, or raise naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, inner[0], value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, args[0], v.strip() if isinstance(v, str) else v) for v in items if v != ""]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - schema bug


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"beta": 0.1}}`` -> ``{"loss.beta": 0.1}``: the dotted keys the command line uses."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.startswith("_"):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + str(k)] = v
    return out


def set_value(cfg: Config, key: str, value: Any) -> None:
    leaves = _leaf_fields()
    if key not in leaves:
        raise ConfigError(f"unknown config key {key!r} (see --help for the list)")
    _, tp, _ = leaves[key]
    target: Any = cfg
    *path, name = key.split(".")
    for part in path:
        target = getattr(target, part)
    setattr(target, name, _coerce(key, tp, value))


def load_config(
    yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None, training: bool = True
) -> Config:
    """Build a validated :class:`Config` from an optional YAML file, then dotted overrides (``training``: see
    :func:`validate`)."""
    cfg = Config()
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        for key, value in flatten(raw).items():
            set_value(cfg, key, value)
    for key, value in (overrides or {}).items():
        set_value(cfg, key, value)
    if cfg.iterate.pairing == "listwise":
        cfg.data.groups = True  # a listwise iterate run trains on groups (each round's config says so too)
    validate(cfg, training=training)
    return cfg


def parse_overrides(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """``["--config", "a.yaml", "--loss.beta", "0.2", "--ckpt.save_hf"]`` -> ("a.yaml", {...}).

    A flag with no value (next token is another flag, or none) means true: ``--ckpt.save_hf``.
    """
    known = set(config_keys())
    config_path: str | None = None
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: options look like --section.key VALUE")
        key, eq, value = token[2:].partition("=")
        if not eq:
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            value = argv[i + 1] if has_value else "true"
            i += 1 if has_value else 0
        i += 1
        if key == "config":
            config_path = value
        elif key not in known:
            raise ConfigError(f"unknown option --{key} (see --help for the list of keys)")
        else:
            overrides[key] = value
    return config_path, overrides


def config_from_args(
    argv: list[str], defaults: dict[str, Any] | None = None, training: bool = True
) -> Config:
    config_path, overrides = parse_overrides(argv)
    return load_config(config_path, {**(defaults or {}), **overrides}, training)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate(cfg: Config, world_size: int = 1, training: bool = True) -> None:
    """Refuse inconsistent values with a message naming the key; cheap, runs before models load.

    ``training`` False (``preftune eval``) leaves out what only training reads: the optimizer, checkpoints and
    the batch arithmetic of optimizer steps.
    """
    _validate_loss(cfg.loss)
    _validate_groups(cfg)
    _validate_train(cfg.train, cfg.loss, world_size, training)
    _validate_data(cfg.data)
    z = cfg.strategy.zero_stage
    _check(z is None or 0 <= z <= 3, "strategy.zero_stage", f"must be 0, 1, 2 or 3, got {z}")
    if training:
        _validate_optim(cfg.optim)
        _check(cfg.ckpt.keep >= 1, "ckpt.keep", f"must be >= 1, got {cfg.ckpt.keep}")
        _check(
            cfg.ckpt.save_steps is None or cfg.ckpt.save_steps >= 1,
            "ckpt.save_steps",
            f"must be >= 1, got {cfg.ckpt.save_steps}",
        )
    _validate_iterate(cfg.iterate)
    _validate_lora(cfg)
    plan_reference(cfg)  # refuses a combination that leaves no valid reference


def _validate_loss(loss: LossConfig) -> None:
    terms = loss_terms(loss.type)
    for term in terms:
        _check(term in LOSSES, "loss.type", f"unknown loss {term!r}; choose one of {', '.join(LOSSES)}")
    _check(len(set(terms)) == len(terms), "loss.type", f"{loss.type!r} names a loss twice")
    _check(len(terms) == 1 or not any(LOSSES[t].listwise for t in terms), "loss.type",
           f"{loss.type!r}: a listwise loss scores whole prompt groups and cannot be part of a mixture")  # fmt: skip
    if loss.weights is not None:
        _check(len(loss.weights) == len(terms), "loss.weights",
               f"{len(loss.weights)} weights for the {len(terms)} terms of loss.type {loss.type!r}")  # fmt: skip
        _check(all(math.isfinite(w) and w >= 0 for w in loss.weights) and any(loss.weights), "loss.weights",
               f"must be finite, >= 0 and not all 0, got {loss.weights}")  # fmt: skip
    if loss.f_divergence != "reverse_kl":
        others = [t for t in terms if not LOSSES[t].f_divergence]
        _check(not others, "loss.f_divergence",
               f"{loss.f_divergence} has no form for loss.type {', '.join(others)} (it reads the log-ratios in other "
               "ways than a score difference); use reverse_kl with it")  # fmt: skip
    _check(loss.beta > 0, "loss.beta", f"must be > 0, got {loss.beta}")
    _check(
        0 <= loss.label_smoothing < 0.5,
        "loss.label_smoothing",
        f"must be in [0, 0.5), got {loss.label_smoothing}",
    )
    _check(loss.nll_coef >= 0, "loss.nll_coef", f"must be >= 0, got {loss.nll_coef}")
    _check(loss.aux_loss_coef >= 0, "loss.aux_loss_coef", f"must be >= 0, got {loss.aux_loss_coef}")
    _check(loss.discopop_tau > 0, "loss.discopop_tau", f"must be > 0, got {loss.discopop_tau}")
    alpha = loss.ld_alpha
    _check(alpha is None or 0 < alpha <= 1, "loss.ld_alpha", f"must be in (0, 1] (or none: off), got {alpha}")
    _check(not (loss.wpo and get_loss(loss.type).listwise), "loss.wpo",
           f"WPO weighs each pair's loss; the listwise loss.type {loss.type!r} has no pairs to weigh")  # fmt: skip
    for key in ("pairs", "pair_weighting", "f_divergence"):  # set directly on a LossConfig, skips _coerce
        choices = typing.get_args(typing.get_type_hints(LossConfig)[key])
        value = getattr(loss, key)
        _check(value in choices, f"loss.{key}", f"{value!r} is not one of {', '.join(choices)}")


def _validate_groups(cfg: Config) -> None:
    """What training on prompt groups (data.groups) needs, and what it does not do yet."""
    loss = cfg.loss
    _check(not get_loss(loss.type).listwise or cfg.data.groups, "loss.type",
           f"{loss.type!r} is listwise: it trains on prompt groups of K responses; set data.groups true")  # fmt: skip
    if cfg.data.groups:
        # LD-DPO's shared length l is min(len chosen, len rejected): a group's responses pair up differently in
        # each pair loss.pairs expands, so one per-token weight per response cannot serve them all.
        _check(loss.ld_alpha is None, "loss.ld_alpha",
               "LD-DPO's shared length is that of one pair; not with data.groups (a response of a group "
               "belongs to several pairs)")  # fmt: skip


def _validate_train(t: TrainConfig, loss: LossConfig, world_size: int, training: bool) -> None:
    _check(t.layout != "prefix_shared" or loss.aux_loss_coef == 0, "train.layout",
           "prefix_shared routes each prompt once, so the MoE balancing loss (loss.aux_loss_coef) would differ "
           "from padded; use packed")  # fmt: skip
    _check(t.micro_batch_size >= 1, "train.micro_batch_size", f"must be >= 1, got {t.micro_batch_size}")
    _check(t.lm_head_chunk >= 1, "train.lm_head_chunk", f"must be >= 1, got {t.lm_head_chunk}")
    _check(t.micro_batch_tokens >= 0, "train.micro_batch_tokens", f"must be >= 0 (0 = off), got {t.micro_batch_tokens}")  # fmt: skip
    if not training:
        return
    _check(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    per_step = t.micro_batch_size * world_size
    _check(t.batch_size % per_step == 0, "train.batch_size",
           f"{t.batch_size} is not divisible by micro_batch_size x world_size = {t.micro_batch_size} x {world_size}")  # fmt: skip
    _check(t.max_epochs >= 1, "train.max_epochs", f"must be >= 1, got {t.max_epochs}")
    _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", f"must be >= 1, got {t.max_steps}")
    _check(t.eval_steps is None or t.eval_steps >= 1, "train.eval_steps", f"must be >= 1, got {t.eval_steps}")
    _check(
        t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", f"must be >= 1, got {t.max_nonfinite_steps}"
    )
    _check(t.logging_steps >= 1, "train.logging_steps", f"must be >= 1, got {t.logging_steps}")


def _validate_optim(o: OptimConfig) -> None:
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(o.max_norm >= 0, "optim.max_norm", f"must be >= 0, got {o.max_norm}")
    _check(len(o.adam_betas) == 2 and all(0 <= b < 1 for b in o.adam_betas), "optim.adam_betas",
           f"must be two numbers in [0, 1), got {o.adam_betas}")  # fmt: skip
    _check(0 <= o.warmup_ratio < 1, "optim.warmup_ratio", f"must be in [0, 1), got {o.warmup_ratio}")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")


def _validate_data(d: DataConfig) -> None:
    _check(d.max_len >= 2, "data.max_len", f"must be >= 2, got {d.max_len}")
    _check(
        d.max_prompt_len is None or d.max_prompt_len >= 1,
        "data.max_prompt_len",
        f"must be >= 1, got {d.max_prompt_len}",
    )
    _check(
        d.max_samples is None or d.max_samples >= 1, "data.max_samples", f"must be >= 1, got {d.max_samples}"
    )
    _check(d.max_responses is None or d.max_responses >= 2, "data.max_responses",
           f"must be >= 2 (a best and a worst response), got {d.max_responses}")  # fmt: skip
    _check(d.input_template is None or "{}" in d.input_template, "data.input_template",
           "must contain '{}' where the prompt goes")  # fmt: skip
    _check(d.num_proc is None or d.num_proc >= 1, "data.num_proc", f"must be >= 1, got {d.num_proc}")
    if d.train_probs is not None:
        _check(len(d.train_probs) == len(d.train), "data.train_probs",
               f"has {len(d.train_probs)} values for {len(d.train)} sources")  # fmt: skip
        _check(all(p >= 0 for p in d.train_probs) and sum(d.train_probs) > 0, "data.train_probs",
               "must be non-negative with a positive sum")  # fmt: skip


def _validate_iterate(it: IterateConfig) -> None:
    _check(it.rounds >= 1, "iterate.rounds", f"must be >= 1, got {it.rounds}")
    _check(it.samples_per_prompt >= 2, "iterate.samples_per_prompt",
           f"must be >= 2 (a pair needs two responses), got {it.samples_per_prompt}")  # fmt: skip
    _check(it.min_score_gap >= 0, "iterate.min_score_gap", f"must be >= 0, got {it.min_score_gap}")
    _check(it.max_new_tokens >= 1, "iterate.max_new_tokens", f"must be >= 1, got {it.max_new_tokens}")
    _check(it.temperature > 0, "iterate.temperature", f"must be > 0, got {it.temperature}")
    _check(0 < it.top_p <= 1, "iterate.top_p", f"must be in (0, 1], got {it.top_p}")
    for key in ("generation_batch_size", "reward_batch_size", "eval_samples_per_prompt"):
        value = getattr(it, key)
        _check(value >= 1, f"iterate.{key}", f"must be >= 1, got {value}")


def _validate_lora(cfg: Config) -> None:
    lora = cfg.lora
    _check(lora.rank >= 0, "lora.rank", f"must be >= 0 (0 = off), got {lora.rank}")
    _check(lora.alpha > 0, "lora.alpha", f"must be > 0, got {lora.alpha}")
    _check(0 <= lora.dropout < 1, "lora.dropout", f"must be in [0, 1), got {lora.dropout}")
    if lora.rank == 0:
        return
    _check(bool(lora.target_modules), "lora.target_modules", "must name at least one module (or all-linear)")
    _check(cfg.strategy.name in ("single", "ddp"), "strategy.name",
           f"LoRA runs with single or ddp, not {cfg.strategy.name} yet")  # fmt: skip
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError("lora.rank: LoRA needs peft: pip install 'preftune[lora]'") from None


# The sections each command reads; ``preftune COMMAND --help`` lists their keys only.
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("", "model", "ref", "data", "loss", "optim", "train", "ckpt", "log", "strategy", "lora"),
    "eval": ("", "model", "ref", "data", "loss", "train", "log", "strategy", "lora"),
}


def _type_name(tp: Any) -> str:
    """``int``, ``float | None``, or a Literal's choices as ``{a,b,c}``."""
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(str(choice) for choice in typing.get_args(tp)) + "}"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])} (comma-separated)"
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def help_lines(command: str | None = None) -> list[str]:
    """One line per key that ``command`` reads (every key without one): ``--section.key TYPE (default: X)  help``."""
    sections = COMMAND_SECTIONS.get(command or "")
    lines = []
    defaults = flatten(Config().to_dict())
    for key, (_, tp, f) in _leaf_fields().items():
        section = key.rpartition(".")[0]
        if sections is not None and section not in sections:
            continue
        lines.append(
            f"  --{key} {_type_name(tp)} (default: {defaults[key]!r})\n      {f.metadata.get('help', '')}"
        )
    return lines


def config_keys() -> list[str]:
    return list(_leaf_fields())
