"""The run configuration's typed, nested sections: every leaf a dotted key (``--loss.beta 0.1``), with its
default and the help text ``preftune COMMAND --help`` shows. Top-level keys have no section (``--output_dir``).

This is the bottom layer: it imports nothing of preftune. Reading values is :mod:`.loading`, field-level checks
:mod:`.fields`; what a value means for the rest of a run is checked by its owner (see :mod:`preftune.validate`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml


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
        "score every train and eval response (of every row, pairs included) with the reference once before "
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
        "ignored, kept so that older configs load: rows of any shape (pairs, and prompts with K scored responses) "
        "train together, each response scored once and each prompt laid out once by prefix_shared",
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
        "loss variant, a name in preftune.losses.LOSSES (the README's Losses table lists them); or a comma-separated "
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
        "chosen response; on a row of K responses, of the top-scored one (the mean over ties for the top)",
    )
    aux_loss_coef: float = _f(0.0, "weight of the MoE load-balancing auxiliary loss")
    simpo_gamma: float = _f(0.5, "SimPO target reward margin gamma")
    discopop_tau: float = _f(0.05, "DiscoPOP modulation temperature tau")
    wpo: bool = _f(
        False,
        "WPO (Zhou et al. 2024), for any pairwise loss.type: each pair's loss times w = exp(a_c + a_r), a = a "
        "response's mean over its tokens of log p(token) - log sum_v p(v)^2 under the policy, no gradient "
        "through w (TRL's use_weighting); logged as wpo/weight. On a row of K responses: per expanded pair",
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
        "ld_alpha); 1 = plain DPO; token counts stay the full lengths; pair rows only",
    )
    pairs: Literal["all", "best_vs_rest", "best_vs_worst"] = _f(
        "best_vs_worst",
        "rows of K responses with a pairwise loss.type: which pairs (better, worse) of each row's responses train; "
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
        "scored response of the prompt as one row (ties kept as ties), for a listwise "
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


def leaf_fields(cls: type = Config, prefix: str = "") -> dict[str, tuple[type, Any, dataclasses.Field]]:
    """Map of dotted key -> (owning dataclass, resolved type, field)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, Any, dataclasses.Field]] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(leaf_fields(tp, f"{prefix}{f.name}."))  # type: ignore[arg-type]
        else:
            out[prefix + f.name] = (cls, tp, f)
    return out
