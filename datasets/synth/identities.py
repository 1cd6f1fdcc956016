"""Identities of the synthetic world: one fixed set of attribute values and colours each.

The attribute groups and values are the labeler's vocabulary, so the ground
truth lives in the same label space as `attr_logits`. Every group is drawn as
something visible in the image:

| group | how it is drawn |
| --- | --- |
| gender | male: broad shoulders, narrow hips; female: narrow shoulders, wide hips |
| age | child: figure 75% as tall; young adult: slim, dark or blond hair; adult: 15% wider waist; elderly: grey or white hair |
| hair length | short: a cap on the head; long: hair down to the shoulders |
| sleeve length | short: skin from above the elbow; long: garment down to the wrist |
| upper-body colour | the torso and sleeve colour (one of the vocabulary's colour names) |
| lower-body type | trousers to the ankle, shorts to mid-thigh, or a flared skirt |
| lower-body colour | the colour of trousers, shorts or skirt |
| backpack | straps over the shoulders (front view) or the pack itself (back view) |
| bag | a strap across the chest and a bag at the hip |
| hat | a brimmed hat |
| glasses | dark lenses across the eyes (hidden in back views) |

A group or value the default vocabulary does not name is drawn as nothing and
recorded as such; a vocabulary must keep the default group and value names for
the world to be drawn (`check_vocabulary`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clasp.store import Vocabulary

# RGB of the colour names the vocabulary uses for clothes.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (236, 236, 232),
    "grey": (128, 128, 128),
    "red": (205, 32, 36),
    "blue": (34, 66, 196),
    "green": (36, 148, 60),
    "yellow": (232, 208, 44),
    "brown": (118, 74, 38),
    "pink": (240, 150, 186),
    "purple": (118, 48, 150),
}
SKIN_TONES = ((241, 200, 170), (224, 172, 130), (190, 134, 96), (140, 94, 62), (96, 64, 44))
YOUNG_HAIR = ((24, 20, 18), (70, 44, 26), (200, 168, 96))  # black, brown, blond
ADULT_HAIR = ((24, 20, 18), (70, 44, 26), (110, 80, 50))
ELDERLY_HAIR = ((160, 160, 158), (214, 212, 206))  # grey, white
SHOE_COLOURS = ((20, 20, 22), (70, 50, 36), (230, 230, 230), (90, 90, 96))

REQUIRED_GROUPS: dict[str, tuple[str, ...]] = {
    "gender": ("male", "female"),
    "age": ("child", "young adult", "adult", "elderly"),
    "hair length": ("short", "long"),
    "sleeve length": ("short", "long"),
    "upper-body colour": tuple(COLOURS),
    "lower-body type": ("trousers", "shorts", "skirt"),
    "lower-body colour": tuple(COLOURS),
    "backpack": ("yes", "no"),
    "bag": ("yes", "no"),
    "hat": ("yes", "no"),
    "glasses": ("yes", "no"),
}
# Probability of "yes" for the carried/worn items (the rest is uniform over values).
ITEM_RATE = 0.4


@dataclass(frozen=True)
class Identity:
    """Everything that stays the same across one person's images."""

    pid: int
    attributes: dict[str, str]  # group -> value, in the vocabulary's names
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    shoes: tuple[int, int, int]
    hat_colour: tuple[int, int, int]
    bag_colour: tuple[int, int, int]
    backpack_colour: tuple[int, int, int]
    height: float  # figure height in pixels at scale 1
    shoulder: float  # half shoulder width, in head units
    hip: float  # half hip width, in head units
    waist: float  # half waist width, in head units

    def has(self, group: str) -> bool:
        return self.attributes.get(group) == "yes"


def check_vocabulary(vocab: Vocabulary) -> None:
    """Refuse a vocabulary whose groups or values the drawing does not know."""
    have = {g.group: tuple(v.name for v in g.values) for g in vocab.attributes}
    for group, values in REQUIRED_GROUPS.items():
        if group not in have:
            raise ValueError(f"vocabulary lacks attribute group {group!r}, which the synthetic world draws")
        unknown = set(have[group]) - set(values)
        if unknown:
            raise ValueError(f"vocabulary group {group!r} has values {sorted(unknown)} the synthetic world cannot draw")
    extra = set(have) - set(REQUIRED_GROUPS)
    if extra:
        raise ValueError(f"vocabulary has attribute groups {sorted(extra)} the synthetic world cannot draw")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


IDENTITY_STREAM = 1  # `clasp synth`; the caption corpus draws its identities from its own stream


def sample_identity(seed: int, pid: int, vocab: Vocabulary, stream: int = IDENTITY_STREAM) -> Identity:
    """The identity `pid` of world `seed`: a pure function of (seed, stream, pid), order independent."""
    rng = np.random.default_rng([seed, stream, pid])
    attrs: dict[str, str] = {}
    for group in vocab.attributes:
        values = [v.name for v in group.values]
        if set(values) == {"yes", "no"}:
            attrs[group.group] = "yes" if rng.random() < ITEM_RATE else "no"
        else:
            attrs[group.group] = _pick(rng, values)
    age, gender = attrs["age"], attrs["gender"]
    if age == "elderly":
        hair = _pick(rng, ELDERLY_HAIR)
    elif age == "young adult" or age == "child":
        hair = _pick(rng, YOUNG_HAIR)
    else:
        hair = _pick(rng, ADULT_HAIR)
    shoulder, hip = (1.0, 0.72) if gender == "male" else (0.82, 0.86)
    waist = 0.66 if gender == "male" else 0.6
    if age == "adult":
        waist *= 1.15
        hip *= 1.08
    height = 222.0 * (0.75 if age == "child" else 1.0) * float(rng.uniform(0.95, 1.03))
    return Identity(
        pid=pid,
        attributes=attrs,
        skin=_pick(rng, SKIN_TONES),
        hair=hair,
        shoes=_pick(rng, SHOE_COLOURS),
        hat_colour=tuple(int(x) for x in rng.integers(20, 235, 3)),
        bag_colour=tuple(int(x) for x in rng.integers(20, 235, 3)),
        backpack_colour=tuple(int(x) for x in rng.integers(20, 200, 3)),
        height=height,
        shoulder=shoulder * float(rng.uniform(0.95, 1.05)),
        hip=hip,
        waist=waist,
    )
