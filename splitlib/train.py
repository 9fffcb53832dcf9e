"""Training interventions: SFT, RePS and SPLIT in every form, and DiffMean for vectors.

The base model is frozen; only the intervention's parameters learn. Layers below the intervention
layer receive no gradient and do not depend on those parameters, and what layer L itself computes
without the intervention is fixed too; so layers 0..L run once per example before training, and
each step only adds the update to layer L's output and runs the layers above. Each training example is a
pair at one multiplier: "add" examples train A_p to win at +m, "sub" examples train A_n to win
at -m. Both answers of an example are scored at the same m (the reference code draws them
independently; see chapter 5).
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch
from torch import Tensor, nn

from .cache import cache_root, cached_artifact
from .checks import check_choice, check_int, check_multipliers, check_number, check_positive_int, check_type
from .data import TASKS, PolarityPair, check_pairs
from .engine import (
    PairBatch,
    artifact_key,
    collate_pairs,
    decoder_forward,
    encode_pairs,
    intervention_layer,
    layer_window,
    pad_token_id,
    plan_batches,
    recording,
    scored_nll,
    upper_pass,
    with_shift,
)
from .interventions import FORMS, Intervention, check_form
from .models import as_causal_lm, check_layer, decoder_layers
from .profiles import EngineSettings, Profile, TrainConfig, check_profile
from .scoring import EncodedPair, Tokenizer, end_of_turn
from .sweep import run_sweep

METHODS = ("diffmean", "sft", "reps", "split")
METHOD_FORMS = {"diffmean": ("vector",), "sft": FORMS, "reps": FORMS, "split": FORMS}


class TrainingError(RuntimeError):
    """Training could not go on (for example the loss became NaN)."""


def check_method(method: str, form: str) -> None:
    """A ValueError for an unknown method or form, or a form the method does not train."""
    check_choice("method", method, METHODS)
    check_form(form)
    if form not in METHOD_FORMS[method]:
        raise ValueError(f"{method} does not apply to the {form} form (only {', '.join(METHOD_FORMS[method])})")


def config_for(profile: Profile, task: str, method: str, form: str) -> TrainConfig:
    """The profile's hyperparameters for a method: SPLIT's config, with the method's own schedule
    where the profile has one; SFT drops the A_n terms (lambda_n = gamma = 0, as the reference's
    SFT baseline); RePS trains add and sub pairs."""
    check_profile(profile)
    check_choice("task", task, TASKS)
    check_method(method, form)
    if (task, form) not in profile.split_configs:
        raise ValueError(f"profile {profile.name!r} has no training config for task {task!r} and form {form!r} "
                         f"(it has {sorted(profile.split_configs)})")
    base = profile.split_configs[(task, form)]
    schedule = profile.method_schedules.get((method, form))
    if schedule is not None:  # the method's own search chose another schedule
        base = dataclasses.replace(base, lr=schedule.lr, epochs=schedule.epochs, batch_size=schedule.batch_size,
                                   grad_accum=1)
    if method == "sft":
        return dataclasses.replace(base, lambda_n=0.0, gamma=0.0)
    if method == "reps":
        return dataclasses.replace(base, pair_types=("add", "sub"))
    return base


# ----- the objectives --------------------------------------------------------------------------------
@dataclass
class _Scores:
    """Per-example losses of the winning and losing answers (mean NLL) and their lengths."""

    win: Tensor
    lose: Tensor
    win_len: Tensor
    lose_len: Tensor


def objective(method: str, scores: _Scores, config: TrainConfig, ref_win: Tensor | None = None,
              ref_lose: Tensor | None = None) -> Tensor:
    """Per-example loss of a method.

    sft:   L_w
    split: lambda_p*L_w + lambda_n*L_l + gamma*ReLU(theta - (L_l - L_w))
    reps:  -log sigma( max(s*(log p_ref(l) - log p_ref(w)), 1)/|w| * log p(w) - log p(l)/|l| )
    (L = mean token NLL; log p = summed log-probability; p_ref = the unsteered model.)
    """
    if method == "sft":
        return scores.win
    if method == "split":
        margin = scores.lose - scores.win
        return (config.lambda_p * scores.win + config.lambda_n * scores.lose
                + config.gamma * torch.relu(config.theta - margin))
    if method == "reps":
        assert ref_win is not None and ref_lose is not None, "reps needs the unsteered model's losses"
        logp_win = -scores.win * scores.win_len
        logp_lose = -scores.lose * scores.lose_len
        weight = torch.clamp(config.reps_scale * (ref_lose - ref_win), min=1.0) / scores.win_len
        return -nn.functional.logsigmoid(weight * logp_win - logp_lose / scores.lose_len)
    raise ValueError(f"no objective for {method!r}")


# ----- examples with their lower layers computed once ------------------------------------------------
@dataclass
class _Example:
    """One pair with what layer L computed for it without the intervention, which training reuses."""

    pair: EncodedPair
    layer_output: Tensor  # (tokens, d): layer L's output
    down_input: Tensor | None  # (tokens, d_ff): the down-projection's input, from which ΔW h follows (weight forms)
    down_output: Tensor | None  # (tokens, d): the down-projection's output, where a post-norm follows it
    ref_logp: tuple[float, float] = (0.0, 0.0)  # summed log-probs of A_p, A_n under the unsteered model


def _row(state: Tensor | None, row: int, length: int) -> Tensor | None:
    """One row's first `length` positions of a recorded state, if it was recorded."""
    return None if state is None else state[row, :length]


@dataclass
class Trainer:
    """Trains one intervention on a list of pairs; see `train_intervention` for the cached entry."""

    model: nn.Module
    tokenizer: Tokenizer
    pairs: Sequence[PolarityPair]
    method: str
    form: str
    layer: int
    config: TrainConfig
    rank: int = 4
    seed: int = 42
    max_answer_tokens: int | None = None
    reuse_lower_layers: bool = True  # False: every step runs the whole model (benchmarks, tests)
    settings: EngineSettings = field(default_factory=EngineSettings)  # only `pad_to` matters in training
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_training(self.model, self.pairs, self.method, self.form, self.layer, self.config, rank=self.rank,
                       seed=self.seed, max_answer_tokens=self.max_answer_tokens, settings=self.settings)
        if self.method == "diffmean":
            raise ValueError("diffmean is closed-form: use splitlib.diffmean, not a Trainer")
        self.device = next(self.model.parameters()).device
        self.n_layers = len(decoder_layers(self.model))
        encoded = encode_pairs(self.tokenizer, self.pairs, self.max_answer_tokens)
        self.examples = self._prepare(encoded)

    def _batch(self, pairs: Sequence[EncodedPair], one_row: bool = False) -> PairBatch:
        """A row per pair (the unsteered preparation), or a training step's pairs in one row that
        shares only the template's head: the update leaves it alone, so every pair's m reads it alike."""
        return collate_pairs(pairs, pad_token_id(self.tokenizer), self.device, packed=True, model=self.model,
                             row_per_pair=not one_row, pad_to=self.settings.pad_to, share_unsteered_only=one_row)

    def _prepare(self, encoded: Sequence[EncodedPair]) -> list[_Example]:
        """Run layers 0..L once per example, keeping what layer L computed (and, for RePS, the
        unsteered model's log-probabilities of both answers)."""
        examples = []
        with torch.no_grad():
            for start in range(0, len(encoded), 16):
                chunk = encoded[start : start + 16]
                batch = self._batch(chunk)
                record = intervention_layer(self.model, batch, self.layer, self.form != "vector")
                ref = None
                if self.method == "reps":
                    final, _ = upper_pass(self.model, batch, self.layer + 1, record.output)
                    ref = [-float(piece.sum()) for piece in torch.split(scored_nll(self.model, batch, final),
                                                                         batch.lengths)]
                for i, pair in enumerate(chunk):
                    logp = (ref[2 * i], ref[2 * i + 1]) if ref else (0.0, 0.0)
                    examples.append(_Example(pair, record.output[i, :pair.length],
                                             _row(record.down_input, i, pair.length),
                                             _row(record.down_output, i, pair.length), logp))
        return examples

    def _steered_layer_output(self, intervention: Intervention, chosen: Sequence[_Example], batch: PairBatch,
                              multipliers: Tensor, dropout: float) -> Tensor:
        """Layer L's output under the intervention for the step's row, gathered from what layer L
        computed without it (`engine.with_shift`)."""
        def gathered(name: str) -> Tensor | None:
            parts = [getattr(example, name) for example in chosen]
            return None if parts[0] is None else torch.cat(parts)[batch.source]

        layer_output = gathered("layer_output")
        assert layer_output is not None
        down_input = gathered("down_input")  # None for the vector form, which ignores h
        with intervention.apply(self.model, multipliers, dropout=dropout) as live:
            shift = live.shift(intervention.delta(layer_output if down_input is None else down_input),
                               layer_output.dtype)
        return with_shift(self.model, self.layer, layer_output, gathered("down_output"), shift)

    def _scores(self, intervention: Intervention, chosen: Sequence[_Example], signs: Tensor, magnitudes: Tensor,
                dropout: float) -> tuple[_Scores, Tensor, Tensor]:
        """Losses of the winning and losing answer of each example at its own multiplier."""
        batch = self._batch([e.pair for e in chosen], one_row=True)
        sizes = [e.pair.length for e in chosen]
        per_token = torch.repeat_interleave(signs * magnitudes, torch.tensor(sizes)).to(self.device)
        multipliers = batch.multipliers(per_token[batch.source])
        if self.reuse_lower_layers:
            steered = self._steered_layer_output(intervention, chosen, batch, multipliers, dropout)
            hidden, _ = upper_pass(self.model, batch, self.layer + 1, steered)
        else:
            with intervention.apply(self.model, multipliers, dropout=dropout):
                hidden = decoder_forward(self.model, batch)
        pieces = torch.split(scored_nll(self.model, batch, hidden), batch.lengths)
        means = torch.stack([p.mean() for p in pieces]).view(-1, 2)  # columns: A_p, A_n
        lengths = torch.tensor(batch.lengths, dtype=means.dtype, device=means.device).view(-1, 2)
        add = signs.to(means.device) > 0
        win = torch.where(add, means[:, 0], means[:, 1])
        lose = torch.where(add, means[:, 1], means[:, 0])
        ref = torch.tensor([e.ref_logp for e in chosen], dtype=means.dtype, device=means.device)
        ref_win = torch.where(add, ref[:, 0], ref[:, 1])
        ref_lose = torch.where(add, ref[:, 1], ref[:, 0])
        scores = _Scores(win, lose, torch.where(add, lengths[:, 0], lengths[:, 1]),
                         torch.where(add, lengths[:, 1], lengths[:, 0]))
        return scores, ref_win, ref_lose

    def schedule(self) -> list[list[tuple[int, int, float]]]:
        """Batches of (example index, sign, |m|), seeded: the same call draws the same examples and m."""
        rng = random.Random(self.seed)
        signs = [1 if kind == "add" else -1 for kind in self.config.pair_types]
        items = [(i, s) for i in range(len(self.examples)) for s in signs]
        batches = []
        for _ in range(self.config.epochs):
            rng.shuffle(items)
            for k in range(0, len(items), self.config.batch_size):
                batches.append([(i, s, rng.choice(self.config.multipliers))
                                for i, s in items[k : k + self.config.batch_size]])
        return batches

    def loss(self, intervention: Intervention, batch: Sequence[tuple[int, int, float]],
             dropout: float | None = None) -> Tensor:
        """Mean objective over one batch of (example, sign, |m|)."""
        chosen = [self.examples[i] for i, _, _ in batch]
        signs = torch.tensor([float(s) for _, s, _ in batch])
        magnitudes = torch.tensor([float(m) for _, _, m in batch])
        scores, ref_win, ref_lose = self._scores(intervention, chosen, signs, magnitudes,
                                                 self.config.dropout if dropout is None else dropout)
        return objective(self.method, scores, self.config, ref_win, ref_lose).mean()

    def train(self, progress: bool = True, max_steps: int | None = None) -> Intervention:
        """AdamW, a linear schedule without warm-up, gradient clipping, a fixed seed."""
        from tqdm.auto import tqdm

        check_positive_int("max_steps", max_steps, optional=True)

        torch.manual_seed(self.seed)  # dropout and LoRA's initial A
        intervention = Intervention.initial(self.model, self.form, self.layer, rank=self.rank, seed=self.seed)
        intervention.to(self.device)
        batches = self.schedule()
        accum = max(1, self.config.grad_accum)
        steps = len(batches) // accum if max_steps is None else max_steps
        if steps == 0:
            raise ValueError(f"{len(self.examples)} examples make no full optimiser step with batch size "
                             f"{self.config.batch_size} and accumulation {accum}")
        optimiser = torch.optim.AdamW(intervention.parameters(), lr=self.config.lr, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: max(0.0, 1.0 - step / steps))
        bar = tqdm(range(steps), desc=f"train {self.method} {self.form}", disable=not progress, unit="step")
        for step in bar:
            total = 0.0
            for batch in batches[step * accum : (step + 1) * accum]:
                loss = self.loss(intervention, batch) / accum
                if not torch.isfinite(loss):
                    raise TrainingError(f"the {self.method} loss became {loss.item()} at step {step}: "
                                        f"lower the learning rate ({self.config.lr}) or the multipliers")
                loss.backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(intervention.parameters(), self.config.max_grad_norm)
            optimiser.step()
            scheduler.step()
            optimiser.zero_grad(set_to_none=True)
            self.history.append(total)
            bar.set_postfix(loss=f"{total:.3f}")
        intervention.requires_grad_(False)
        return intervention


def check_training(model: nn.Module, pairs: Sequence[PolarityPair], method: str, form: str, layer: int,
                   config: TrainConfig | None, *, rank: int, seed: int, max_answer_tokens: int | None,
                   settings: EngineSettings | None) -> None:
    """Every check of a training run, made before anything is computed or written."""
    check_method(method, form)
    if isinstance(pairs, Sequence) and not pairs:
        raise ValueError("the training set is empty")
    check_pairs(pairs, "training set")
    check_layer(model, layer)
    if method != "diffmean":
        if config is None:
            raise ValueError(f"{method} needs a TrainConfig (see splitlib.train.config_for)")
        check_type("config", config, TrainConfig)
    check_positive_int("rank", rank)
    check_int("seed", seed)
    check_positive_int("max_answer_tokens", max_answer_tokens, optional=True)
    if settings is not None:
        check_type("settings", settings, EngineSettings)


def train_intervention(
    model: nn.Module,
    tokenizer: Tokenizer,
    pairs: Sequence[PolarityPair],
    method: str,
    form: str,
    layer: int,
    config: TrainConfig | None = None,
    *,
    rank: int = 4,
    seed: int = 42,
    max_answer_tokens: int | None = None,
    settings: EngineSettings | None = None,
    cache: bool = True,
    progress: bool = True,
) -> Intervention:
    """A trained intervention, from the artifact cache when the same inputs trained one before.

    The artifact is `intervention.safetensors` + `intervention.json` (method, form, layer, model,
    data, hyperparameters, loss history), plus a peft adapter for the LoRA form; it appears only
    whole, so a failed run (a NaN loss, an interruption) leaves nothing behind.
    """
    check_training(model, pairs, method, form, layer, config, rank=rank, seed=seed,
                   max_answer_tokens=max_answer_tokens, settings=settings)
    provenance = {
        "method": method, "form": form, "layer": layer, "model": str(getattr(model.config, "name_or_path", "")),
        "rank": rank if form == "lora" else None, "seed": seed,
        "config": dataclasses.asdict(config) if config is not None else None, "max_answer_tokens": max_answer_tokens,
        "pad_to": (settings or EngineSettings()).pad_to,
    }
    key = artifact_key(("train",), model, pairs, **provenance)

    def build(folder):
        if method == "diffmean":
            result, history = diffmean(model, tokenizer, pairs, layer, max_answer_tokens), []
        else:
            trainer = Trainer(model, tokenizer, pairs, method, form, layer, config, rank, seed, max_answer_tokens,
                              settings=settings or EngineSettings())
            result, history = trainer.train(progress=progress), trainer.history
        summary = {**provenance, "pairs": f"{len(pairs)} pairs ({pairs[0].id} ...)", "history": history}
        result.save(folder, summary)
        if form == "lora":
            result.save_peft(model, folder / "peft")
        return result

    if not cache:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            from pathlib import Path

            return build(Path(scratch))
    folder = cached_artifact(cache_root() / "interventions" / key, build, folder=True, made_by="train")
    return Intervention.load(folder).to(next(model.parameters()).device)


def train_for_profile(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair], method: str,
                      form: str, config: TrainConfig | None, profile: Profile, progress: bool = True) -> Intervention:
    """`train_intervention` with the profile's layer, LoRA rank, seed, answer length and engine
    settings: every caller that trains for a profile goes through here, so equal runs share one artifact."""
    return train_intervention(model, tokenizer, pairs, method, form, profile.layer, config, rank=profile.lora_rank,
                              seed=profile.seed, max_answer_tokens=profile.max_answer_tokens, settings=profile.engine,
                              progress=progress)


def train_all(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair], profile: Profile, task: str,
              progress: bool = True) -> dict[tuple[str, str], Intervention]:
    """Every method in every form it applies to, with the profile's hyperparameters (cached).
    Every config is looked up before the first training starts, so a bad task fails at once."""
    configs = {(method, form): None if method == "diffmean" else config_for(profile, task, method, form)
               for method in METHODS for form in METHOD_FORMS[method]}
    return {
        (method, form): train_for_profile(model, tokenizer, pairs, method, form, config, profile, progress)
        for (method, form), config in configs.items()
    }


def evaluation_multipliers(profile: Profile, method: str, form: str, intervention: Intervention,
                           unit: float) -> list[float]:
    """The m >= 0 at which a method is evaluated: the profile's vector or weight grid for trained
    updates; for DiffMean, the relative grid (strengths in units of the residual norm `unit`)."""
    check_profile(profile)
    check_method(method, form)
    check_type("intervention", intervention, Intervention)
    if method == "diffmean":
        check_number("unit", unit, 0, open_low=True)
        norm = float(intervention.delta_b.detach().norm())
        if not 0 < norm < float("inf"):
            raise ValueError(f"the DiffMean vector's norm is {norm}: no relative grid can be scaled from it")
        return [x * unit / norm for x in profile.relative_grid if x >= 0]
    grid = profile.vector_grid if form == "vector" else profile.weight_grid
    return [m for m in grid if m >= 0]


def evaluation_grid(profile: Profile, method: str, form: str, intervention: Intervention, unit: float,
                    negative: bool = True) -> list[float]:
    """`evaluation_multipliers` and, with `negative`, their mirror images m < 0, in increasing order."""
    positive = evaluation_multipliers(profile, method, form, intervention, unit)
    return sorted(set(positive) | ({-m for m in positive if m > 0} if negative else set()))


def evaluation_sweeps(model: nn.Module, tokenizer: Tokenizer, splits: dict[str, Sequence[PolarityPair]],
                      trained: dict[tuple[str, str], Intervention], profile: Profile, unit: float, *,
                      negative: bool = True, progress: bool = True) -> pd.DataFrame:
    """Every trained update swept on every split over its `evaluation_grid` (both signs of m),
    with summed losses; one table with method and form columns, restricted to m >= 0 unless
    `negative`. Each sweep is cached whole, so chapters that ask for either side share it. Every
    grid and split is checked before the first sweep runs."""
    grids = {key: check_multipliers(evaluation_grid(profile, *key, intervention, unit, negative=True), intervention,
                                    what=f"{key[0]} {key[1]} evaluation")
             for key, intervention in trained.items()}
    for split, pairs in splits.items():
        check_pairs(pairs, f"{split} split")
    tables = []
    for (method, form), intervention in trained.items():
        grid = grids[(method, form)]
        for split, pairs in splits.items():
            table = run_sweep(model, tokenizer, pairs, intervention, grid, split=split, loss="sum",
                              max_answer_tokens=profile.max_answer_tokens, settings=profile.engine,
                              progress=progress)
            tables.append(table.assign(method=method, form=form))
    results = pd.concat(tables, ignore_index=True)
    return results if negative else results[results.m >= 0].reset_index(drop=True)


# ----- DiffMean and the residual-norm unit --------------------------------------------------------------
DiffMeanTokens = Literal["answer", "completion"]
DIFFMEAN_TOKENS: tuple[DiffMeanTokens, ...] = ("answer", "completion")


def completion_activations(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair], layer: int,
                           max_answer_tokens: int | None = None, settings: EngineSettings | None = None,
                           tokens: DiffMeanTokens = "completion") -> tuple[Tensor, Tensor]:
    """Layer-L outputs at the completion tokens of every answer, unsteered.

    Returns (per-answer means over `tokens` — "answer": the answer's own tokens, "completion": those
    and the end-of-turn text — shape (2 * n_pairs, d), rows A_p, A_n per pair; and the norm of
    every completion token's activation)."""
    check_choice("tokens", tokens, DIFFMEAN_TOKENS)
    end_tokens = len(tokenizer(end_of_turn(tokenizer), add_special_tokens=False).input_ids) if tokens == "answer" else 0
    check_pairs(pairs, "DiffMean")
    check_layer(model, layer)
    encoded = encode_pairs(tokenizer, pairs, max_answer_tokens)
    device = next(model.parameters()).device
    block = decoder_layers(model)[layer]
    means = torch.empty(2 * len(encoded), as_causal_lm(model).config.hidden_size, dtype=torch.float64)
    norms = []
    with torch.no_grad():
        for indices in plan_batches(encoded, settings or EngineSettings()):
            batch = collate_pairs([encoded[i] for i in indices], pad_token_id(tokenizer), device, packed=False)
            with recording({"out": block}) as seen, layer_window(model, 0, layer + 1):
                decoder_forward(model, batch)
            selected = seen["out"][batch.rows, batch.own_cols].double()  # the completion tokens themselves
            norms.append(selected.norm(dim=-1).cpu())
            rows = [j for i in indices for j in (2 * i, 2 * i + 1)]
            for row, chunk in zip(rows, torch.split(selected, batch.lengths)):
                means[row] = chunk[: len(chunk) - end_tokens].mean(dim=0).cpu()
    return means, torch.cat(norms)


def diffmean(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair], layer: int,
             max_answer_tokens: int | None = None, tokens: DiffMeanTokens = "answer") -> Intervention:
    """DiffMean: the mean over pairs of [mean layer-L output over A_p's answer tokens] minus the
    same for A_n, as a vector-form intervention at `layer`. (The last prompt token is shared by
    both answers, so a difference taken there would be zero.)

    `tokens="answer"` averages the answer's own tokens, as the reference code does;
    `"completion"` adds the end-of-turn text the losses also score."""
    check_layer(model, layer)
    means, _ = completion_activations(model, tokenizer, pairs, layer, max_answer_tokens, tokens=tokens)
    direction = (means[0::2] - means[1::2]).mean(dim=0).float()
    return Intervention("vector", layer, delta_b=direction).requires_grad_(False)


def residual_norm(model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[PolarityPair], layer: int,
                  max_answer_tokens: int | None = None) -> float:
    """The median norm of layer L's output over completion tokens: the natural unit for how far a
    vector moves the residual stream."""
    _, norms = completion_activations(model, tokenizer, pairs, layer, max_answer_tokens)
    return float(norms.median())
