"""Training-time augmentation: a share of the training texts is seen as the daemon will
see them (rendered as an email and extracted again) or as other people write them
(typos, contractions, filler words, no capitals or punctuation), drawn anew every epoch."""

from __future__ import annotations

import random
from dataclasses import dataclass

from daemon.samples import render_email
from daemon.text import email_to_text
from training.robustness import PERTURBATIONS

#: The perturbations used for noise augmentation (reordering and the email wrapper are
#: left to the evaluation and to the email augmentation).
NOISE = ("typos", "contractions", "filler", "lowercase")


def email_augment(text: str, rng: random.Random) -> str:
    """A training text as the daemon would see it after rendering it as an email."""
    extracted = email_to_text(render_email(text, rng))
    return extracted.text or text


def noise_augment(text: str, rng: random.Random) -> str:
    return PERTURBATIONS[rng.choice(NOISE)](text, rng) or text


@dataclass(frozen=True)
class Augmenter:
    email_fraction: float
    noise_fraction: float

    @property
    def fraction(self) -> float:
        """The share of texts changed."""
        return min(1.0, self.email_fraction + self.noise_fraction)

    def forced(self, text: str, rng: random.Random) -> str:
        """``text`` changed one way, email or noise in proportion to their shares."""
        if self.noise_fraction <= 0:
            return email_augment(text, rng)
        if self.email_fraction <= 0 or rng.random() >= self.email_fraction / self.fraction:
            return noise_augment(text, rng)
        return email_augment(text, rng)
