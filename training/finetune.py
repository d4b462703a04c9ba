"""Fine-tuning: linear-probe head initialisation, then full fine-tuning (LP-FT).

A plain PyTorch loop (nanoGPT-style) rather than ``Trainer``: batches are bucketed by
length (so little padding is computed on a CPU), two learning rates (encoder, head),
linear warm-up and decay, label smoothing, early stopping on validation accuracy.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from sklearn.linear_model import LogisticRegression
from tokenizers import Tokenizer
from torch import nn
from tqdm.auto import tqdm

from training.augment import Augmenter
from training.config import TrainerConfig
from training.model import IntentClassifier

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_accuracy: float
    seconds: float


@dataclass
class FitResult:
    model: IntentClassifier
    probe_val_accuracy: float
    best_epoch: int
    best_val_accuracy: float
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    #: the probe-initialised weights fine-tuning started from (for WiSE-FT)
    initial_state: dict[str, torch.Tensor] | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return [e.ids for e in tokenizer.encode_batch(list(texts))]


def pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return input_ids, mask


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random | None
) -> list[list[int]]:
    """Index batches of similar length; shuffled (chunks, then batches) when ``rng`` is given."""
    ids = list(range(len(lengths)))
    if rng is None:
        ids.sort(key=lambda i: lengths[i])
        return [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    rng.shuffle(ids)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(ids), chunk):
        part = sorted(ids[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def _batched(
    model: IntentClassifier,
    ids: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int,
    width: int,
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> FloatArray:
    """``forward`` (the model, or its pooled embedding) over length-bucketed batches, in
    eval mode, rows back in the order of ``ids``."""
    model.eval()
    out = np.zeros((len(ids), width), dtype=np.float32)
    for batch in bucketed_batches([len(r) for r in ids], batch_size, None):
        input_ids, mask = pad([ids[i] for i in batch], pad_id)
        out[batch] = forward(input_ids, mask).float().numpy()
    return out


def predict_logits(
    model: IntentClassifier, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 128
) -> FloatArray:
    return _batched(model, ids, pad_id, batch_size, model.head.out_features, model)


def embeddings(
    model: IntentClassifier, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 128
) -> FloatArray:
    return _batched(model, ids, pad_id, batch_size, int(model.head.in_features), model.embed)


def init_head_from_probe(
    model: IntentClassifier,
    train_ids: Sequence[Sequence[int]],
    train_labels: Sequence[int],
    pad_id: int,
    c: float,
    seed: int,
) -> None:
    """Fit a logistic regression on frozen embeddings and copy it into the head."""
    features = embeddings(model, train_ids, pad_id)
    probe = LogisticRegression(C=c, max_iter=3000, random_state=seed)
    probe.fit(features, np.asarray(train_labels))
    num_labels = model.head.out_features
    weight = np.zeros((num_labels, features.shape[1]), dtype=np.float32)
    bias = np.full((num_labels,), -1e4, dtype=np.float32)  # classes absent from a tiny subset
    for row, cls in enumerate(probe.classes_):
        weight[int(cls)] = probe.coef_[row]
        bias[int(cls)] = probe.intercept_[row]
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))


def accuracy(logits: FloatArray, labels: Sequence[int], num_labels: int | None = None) -> float:
    """Top-1 accuracy; with ``num_labels``, the best of the first ``num_labels`` columns
    (the intents, as the daemon serves them, without "none of these")."""
    if len(labels) == 0:
        return 0.0
    scores = logits if num_labels is None else logits[:, :num_labels]
    return float((scores.argmax(axis=1) == np.asarray(labels)).mean())


def interpolate(
    model: IntentClassifier,
    start: dict[str, torch.Tensor],
    end: dict[str, torch.Tensor],
    alpha: float,
) -> None:
    """WiSE-FT (Wortsman et al. 2022): ``alpha * end + (1 - alpha) * start``, weight by weight."""
    mixed = {
        name: (1 - alpha) * start[name] + alpha * value if value.is_floating_point() else value
        for name, value in end.items()
    }
    model.load_state_dict(mixed)


def choose_wise_alpha(
    model: IntentClassifier,
    start: dict[str, torch.Tensor],
    sets: Sequence[tuple[Sequence[Sequence[int]], Sequence[int]]],
    pad_id: int,
    num_labels: int,
    alphas: Sequence[float] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5),
) -> tuple[float, dict[float, list[float]]]:
    """The alpha whose mean accuracy over ``sets`` (token ids, labels) is highest (ties:
    the larger alpha); leaves the model at that alpha. Returns it and every alpha's scores."""
    end = copy.deepcopy(model.state_dict())
    scores: dict[float, list[float]] = {}
    for alpha in alphas:
        interpolate(model, start, end, alpha)
        scores[alpha] = [
            accuracy(predict_logits(model, ids, pad_id), labels, num_labels) for ids, labels in sets
        ]
    best = max(alphas, key=lambda a: (round(float(np.mean(scores[a])), 6), a))
    interpolate(model, start, end, best)
    return best, scores


@dataclass
class _Loop:
    """What one training phase needs: data, optimiser, schedule."""

    tokenizer: Tokenizer
    pad_id: int
    max_length: int
    train_texts: Sequence[str]
    train_ids: list[list[int]]
    labels: torch.Tensor
    config: TrainerConfig
    augment: Augmenter | None
    rng: random.Random

    def optimiser(
        self, model: IntentClassifier, encoder_lr: float, head_lr: float, epochs: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        steps_per_epoch = (len(self.train_ids) + self.config.batch_size - 1) // (
            self.config.batch_size
        )
        total = steps_per_epoch * epochs
        warmup = int(self.config.warmup_ratio * total)
        optimizer = torch.optim.AdamW(
            [
                {"params": model.encoder.parameters(), "lr": encoder_lr},
                {"params": model.head.parameters(), "lr": head_lr},
            ],
            weight_decay=self.config.weight_decay,
        )

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            return max(0.0, (total - step) / max(1, total - warmup))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def epoch(
        self,
        model: IntentClassifier,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
        desc: str,
    ) -> float:
        """One pass over the training data; returns the mean loss."""
        ids = self.train_ids
        if self.augment is not None and self.augment.fraction > 0:
            fraction = self.augment.fraction
            texts = [
                self.augment.forced(t, self.rng) if self.rng.random() < fraction else t
                for t in self.train_texts
            ]
            ids = encode(self.tokenizer, texts, self.max_length)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=self.config.label_smoothing)
        model.train()
        running = 0.0
        batches = bucketed_batches([len(r) for r in ids], self.config.batch_size, self.rng)
        # tqdm's disable=None: a bar only when stderr is a terminal. Redirected to a file it
        # would write a carriage-return update per step; the log's line per epoch says it.
        bar = tqdm(batches, desc=desc, disable=None if self.config.progress else True)
        for n, batch in enumerate(bar, start=1):
            input_ids, mask = pad([ids[i] for i in batch], self.pad_id)
            loss = loss_fn(model(input_ids, mask), self.labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            running += float(loss.item())
            if n % 20 == 0:
                bar.set_postfix(loss=f"{running / n:.3f}")
        return running / max(1, len(batches))


@dataclass
class _Epochs:
    """Runs training passes and records each one: validation accuracy, the history, the
    ``on_epoch`` callback, the log line."""

    loop: _Loop
    val_ids: list[list[int]]
    val_labels: Sequence[int]
    history: list[EpochRecord]
    on_epoch: Callable[[EpochRecord], None] | None
    log: Callable[[str], None]

    def accuracy(self, model: IntentClassifier) -> float:
        return accuracy(predict_logits(model, self.val_ids, self.loop.pad_id), self.val_labels)

    def run(
        self,
        model: IntentClassifier,
        step: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR],
        number: int,
        name: tuple[str, int],
        note: str = "",
    ) -> EpochRecord:
        """Epoch ``number`` of the history; ``name`` is (what the log calls it, how many
        the phase has), ``note`` qualifies its validation accuracy."""
        started = time.perf_counter()
        loss = self.loop.epoch(model, step[0], step[1], f"{name[0]}/{name[1]}")
        record = EpochRecord(number, loss, self.accuracy(model), time.perf_counter() - started)
        self.history.append(record)
        if self.on_epoch is not None:
            self.on_epoch(record)
        self.log(
            f"{name[0]}: loss {loss:.4f}, validation accuracy {note}{record.val_accuracy:.4f} "
            f"({record.seconds:.0f} s)"
        )
        return record


def _probe(
    model: IntentClassifier,
    loop: _Loop,
    train_labels: Sequence[int],
    augment: Augmenter | None,
) -> None:
    """Initialise the head from a logistic-regression probe on frozen embeddings."""
    config = loop.config
    probe_ids, probe_labels = loop.train_ids, list(train_labels)
    if augment is not None and augment.fraction > 0:
        # The probe also sees a share of the texts as the daemon will: rendered as emails.
        rng = random.Random(config.seed + 1)
        texts = loop.train_texts
        extra = [i for i in range(len(texts)) if rng.random() < augment.fraction]
        probe_ids = loop.train_ids + encode(
            loop.tokenizer, [augment.forced(texts[i], rng) for i in extra], loop.max_length
        )
        probe_labels = probe_labels + [train_labels[i] for i in extra]
    init_head_from_probe(model, probe_ids, probe_labels, loop.pad_id, config.probe_c, config.seed)


def _fine_tune(model: IntentClassifier, epochs: _Epochs, result: FitResult) -> None:
    """``config.epochs`` of full fine-tuning; keeps the best epoch's weights (early stopping)."""
    config = epochs.loop.config
    step = epochs.loop.optimiser(model, config.encoder_lr, config.head_lr, config.epochs)
    best_state = copy.deepcopy(model.state_dict())
    stale = 0
    for epoch in range(1, config.epochs + 1):
        record = epochs.run(model, step, epoch, (f"epoch {epoch}", config.epochs))
        if record.val_accuracy > result.best_val_accuracy:
            result.best_val_accuracy = record.val_accuracy
            result.best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
            if stale >= config.early_stopping_patience:
                epochs.log(f"early stopping: no improvement for {stale} epochs")
                break
    model.load_state_dict(best_state)


def _int8_aware(model: IntentClassifier, epochs: _Epochs, result: FitResult) -> None:
    """``config.qat_epochs`` of fine-tuning under simulated int8 (see training/qat.py)."""
    from training.qat import fake_quantised

    config = epochs.loop.config
    lr = config.qat_encoder_lr
    step = epochs.loop.optimiser(model, lr, lr, config.qat_epochs)
    with fake_quantised(model.encoder):
        for epoch in range(1, config.qat_epochs + 1):
            name = (f"int8-aware epoch {epoch}", config.qat_epochs)
            epochs.run(model, step, config.epochs + epoch, name, "(int8-rounded) ")
    result.best_val_accuracy = epochs.accuracy(model)
    epochs.log(f"after int8-aware fine-tuning: validation accuracy {result.best_val_accuracy:.4f}")


def fit(
    model: IntentClassifier,
    tokenizer: Tokenizer,
    pad_id: int,
    max_length: int,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    val_texts: Sequence[str],
    val_labels: Sequence[int],
    config: TrainerConfig,
    augment: Augmenter | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> FitResult:
    """LP-FT: probe-initialised head, ``config.epochs`` of full fine-tuning, then
    ``config.qat_epochs`` of quantisation-aware fine-tuning (see training/qat.py)."""
    started = time.perf_counter()
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    loop = _Loop(
        tokenizer,
        pad_id,
        max_length,
        train_texts,
        encode(tokenizer, train_texts, max_length),
        torch.tensor(list(train_labels), dtype=torch.long),
        config,
        augment,
        random.Random(config.seed),
    )
    val_ids = encode(tokenizer, val_texts, max_length)
    epochs = _Epochs(loop, val_ids, val_labels, [], on_epoch, log)
    _probe(model, loop, train_labels, augment)
    initial_state = copy.deepcopy(model.state_dict()) if config.wise_alpha is not None else None
    probe_acc = epochs.accuracy(model)
    log(f"linear probe: validation accuracy {probe_acc:.4f}")
    if on_epoch is not None:  # step 0: the probe-initialised head, before fine-tuning
        on_epoch(EpochRecord(0, float("nan"), probe_acc, time.perf_counter() - started))
    result = FitResult(model, probe_acc, 0, probe_acc, epochs.history, initial_state=initial_state)
    if config.epochs > 0:
        _fine_tune(model, epochs, result)
    if config.qat_epochs > 0:
        _int8_aware(model, epochs, result)
    result.seconds = time.perf_counter() - started
    return result
