"""Training-time augmentation: a share of the training texts is seen as the daemon will
see them (rendered as an email and extracted again), as other people write them (typos,
contractions, filler words, no capitals or punctuation), or inside a longer email whose
other sentences carry no intent; drawn anew every epoch."""

from __future__ import annotations

import random
from dataclasses import dataclass

from daemon.model.samples import render_email
from daemon.model.text import email_to_text
from training.robustness import PERTURBATIONS, EmailPadding

#: The perturbations used for noise augmentation (reordering and the email wrapper are
#: left to the evaluation and to the email augmentation).
NOISE = ("typos", "contractions", "filler", "lowercase")


def email_augment(text: str, rng: random.Random) -> str:
    """A training text as the daemon would see it after rendering it as an email."""
    extracted = email_to_text(render_email(text, rng))
    return extracted.text or text


def noise_augment(text: str, rng: random.Random) -> str:
    return PERTURBATIONS[rng.choice(NOISE)](text, rng) or text


# Deliberately not the sentences the long-email evaluation set is built from
# (robustness.EVALUATION_PADDING), so that set stays unseen.
TRAINING_PADDING = EmailPadding(
    context=(
        "I have been a customer for a while now and generally like the service.",
        "Sorry for the long message, I wanted to give you the whole picture.",
        "My son showed me how to use the app when I opened the account.",
        "Things are busy here with the kids off school this week.",
        "I could not reach anyone on the phone earlier today.",
        "I am on holiday at the moment, so my replies may be slow.",
        "I already looked through the FAQ section without luck.",
        "A friend recommended your bank to me last year.",
        "I work night shifts, so please email rather than call.",
        "Thank you for the quick help last time I wrote in.",
        "I manage the finances for our small shop with this account.",
        "English is not my first language, I hope this is clear.",
        "I am writing this on my lunch break.",
        "This is the first time I have had to contact you.",
    ),
    openings=(
        "Good morning,",
        "Hi team,",
        "To whom it may concern,",
        "Hello there,",
        "Dear sir or madam,",
    ),
    closings=(
        "Thanks for looking into this.",
        "I appreciate your help.",
        "Hope to hear back soon.",
        "Kind regards and have a good week.",
    ),
    sentences=(1, 3),
)


def long_email_augment(text: str, rng: random.Random) -> str:
    """``text`` inside a longer email of greetings and context that carry no intent."""
    return TRAINING_PADDING.wrap(text, rng)


@dataclass(frozen=True)
class Augmenter:
    email_fraction: float
    noise_fraction: float
    long_email_fraction: float = 0.0

    @property
    def fraction(self) -> float:
        """The share of texts changed."""
        return min(1.0, self.email_fraction + self.noise_fraction + self.long_email_fraction)

    def forced(self, text: str, rng: random.Random) -> str:
        """``text`` changed one way: email, noise or long email in proportion to their
        shares (with only emails, no draw is spent on the choice)."""
        if self.noise_fraction <= 0 and self.long_email_fraction <= 0:
            return email_augment(text, rng)
        pick = rng.random() * (self.email_fraction + self.noise_fraction + self.long_email_fraction)
        if pick < self.email_fraction:
            return email_augment(text, rng)
        if pick < self.email_fraction + self.noise_fraction:
            return noise_augment(text, rng)
        return long_email_augment(text, rng)
