"""Stage 1, prepare data: banking77, the user's corrections, the robustness sets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from dataclasses import dataclass

from training.config import TrainConfig
from training.data import Banking77, Split, load_banking77, same_text_key
from training.finetune import seed_everything
from training.model import resolve_base_model
from training.out_of_scope import TrainingSets, training_sets
from training.robustness import RobustnessData, load_robustness

Log = Callable[[str], None]


@dataclass(frozen=True)
class Prepared:
    """What a run trains and is judged on."""

    data: Banking77  # banking77 with the corrections (train only; validation, test untouched)
    robust: RobustnessData | None  # the project's robustness sets, when configured
    sets: TrainingSets  # what fitting trains on: ``data`` with the robustness data folded in


def with_corrections(
    data: Banking77, extra_train: Split | None, replace_texts: Collection[str], log: Log
) -> Banking77:
    """Training examples whose text (case and spacing aside) is in ``replace_texts``
    dropped, then ``extra_train`` appended: a correction overrides banking77's label for
    the same text, and a held-out correction is never trained on under another label."""
    if replace_texts:
        drop = {same_text_key(t) for t in replace_texts}
        keep = [i for i, t in enumerate(data.train.texts) if same_text_key(t) not in drop]
        if len(keep) < len(data.train):
            log(f"data: {len(data.train) - len(keep)} training examples replaced by corrections")
            train = Split([data.train.texts[i] for i in keep], [data.train.labels[i] for i in keep])
            data = dataclasses.replace(data, train=train)
    if extra_train is not None and len(extra_train):
        train = Split(data.train.texts + extra_train.texts, data.train.labels + extra_train.labels)
        data = dataclasses.replace(data, train=train)
        log(f"data: {len(extra_train)} extra training examples (corrections)")
    return data


def _describe(config: TrainConfig, prepared: Prepared) -> str:
    data, robust, sets = prepared.data, prepared.robust, prepared.sets
    return (
        f"data: {len(sets.data.train)} train, {len(data.val)} validation, {len(data.test)} test "
        f"({data.source}, {config.data.dir})"
        + (
            f"; robustness sets from {config.data.robustness_dir}: "
            f"{len(robust.other_words)} development, {len(robust.oos_eval)} out-of-scope "
            f"evaluation, {len(sets.oos_calibration)} out-of-scope calibration"
            if robust is not None
            else ""
        )
    )


def prepare_data(
    config: TrainConfig,
    log: Log = print,
    *,
    extra_train: Split | None = None,
    replace_texts: Collection[str] = (),
    robustness: bool = True,
) -> Prepared:
    """Seed everything, check the base model's path, load and assemble the data.

    ``robustness=False`` ignores ``data.robustness_dir``: banking77 alone, no "none of
    these" output (what a sweep trial fits on).
    """
    seed = config.train.seed
    seed_everything(seed)
    if config.model.init == "pretrained":
        resolve_base_model(config.model.base_model)  # a wrong path fails before any work
    data = with_corrections(load_banking77(config.data, seed), extra_train, replace_texts, log)
    robust_dir = config.data.robustness_dir if robustness else None
    robust = load_robustness(robust_dir, data.label_names) if robust_dir is not None else None
    prepared = Prepared(data, robust, training_sets(config, data, robust))
    log(_describe(config, prepared))
    return prepared
