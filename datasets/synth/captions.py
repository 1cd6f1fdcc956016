"""Free-text captions of what the synthetic renderer drew, in varied natural phrasings.

The caption corpus (`corpus.py`) describes each picture the way person
text–image corpora (CUHK-PEDES style) and web photos of single items do: a
subject noun that folds in gender and age, then clauses about hair, top,
lower garment, shoes and carried items, in a random order, each left out at
random, with synonyms drawn from small tables.

Invariant: a caption mentions only what is visible. Every clause is tied to a
material of the drawing and is written only when at least `MIN_VISIBLE_PIXELS`
of that material show in the picture (`Visible`); a statement of absence ("no
glasses", "a bare head") is written only when the place it speaks about shows
(the face for glasses, the torso for a backpack or a bag). So glasses are never
mentioned, either way, for a person seen from behind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clasp.datasets.synth.drawing import MATERIALS
from clasp.datasets.synth.identities import COLOURS, Identity

MIN_VISIBLE_PIXELS = 24
HAIR_NAMES = {(24, 20, 18): "black", (70, 44, 26): "brown", (200, 168, 96): "blond", (110, 80, 50): "brown",
              (160, 160, 158): "grey", (214, 212, 206): "white"}
SHOE_NAMES = {(20, 20, 22): "black", (70, 50, 36): "brown", (230, 230, 230): "white", (90, 90, 96): "grey"}
SUBJECTS = {
    ("male", "child"): ("boy", "little boy", "male child", "young boy"),
    ("male", "young adult"): ("young man", "teenage boy", "male student", "young adult man"),
    ("male", "adult"): ("man", "middle-aged man", "grown man", "adult man"),
    ("male", "elderly"): ("old man", "elderly man", "senior man", "elderly gentleman"),
    ("female", "child"): ("girl", "little girl", "female child", "young girl"),
    ("female", "young adult"): ("young woman", "teenage girl", "female student", "young adult woman"),
    ("female", "adult"): ("woman", "middle-aged woman", "grown woman", "adult woman"),
    ("female", "elderly"): ("old woman", "elderly woman", "senior woman", "elderly lady"),
}
GENDER_ONLY = {"male": ("male pedestrian", "man", "male person"), "female": ("female pedestrian", "woman", "female person")}
AGE_ONLY = {"child": ("child", "kid"), "young adult": ("young adult", "teenager", "student"),
            "adult": ("middle-aged adult", "grown-up person", "adult"), "elderly": ("elderly person", "old person")}
TOPS = {"short": ("t-shirt", "short-sleeved top", "short-sleeved shirt", "top with short sleeves"),
        "long": ("long-sleeved top", "long-sleeved shirt", "jacket", "sweater", "jacket with long sleeves")}
LOWER = {"trousers": ("trousers", "long pants", "pants"), "shorts": ("shorts", "short pants"),
         "skirt": ("skirt", "knee-length skirt")}
SHOES = ("shoes", "sneakers", "boots")


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def colour_name(rgb) -> str:
    """The vocabulary colour nearest to an RGB triple (for randomly coloured bags and hats)."""
    names = list(COLOURS)
    table = np.array([COLOURS[n] for n in names], np.float32)
    return names[int(np.argmin(((table - np.asarray(rgb, np.float32)) ** 2).sum(1)))]


@dataclass(frozen=True)
class Visible:
    """Pixel count of each material in one picture; `shows(*names)` is the visibility rule."""

    counts: np.ndarray  # (len(MATERIALS),)

    @classmethod
    def of(cls, materials: np.ndarray) -> "Visible":
        return cls(np.bincount(materials.ravel(), minlength=len(MATERIALS)))

    def shows(self, *names: str) -> bool:
        return sum(int(self.counts[MATERIALS.index(n)]) for n in names) >= MIN_VISIBLE_PIXELS


def subject(rng: np.random.Generator, identity: Identity) -> str:
    a = identity.attributes
    r = rng.random()
    if r < 0.15:
        return pick(rng, GENDER_ONLY[a["gender"]])
    if r < 0.27:
        return pick(rng, AGE_ONLY[a["age"]])
    if r < 0.32:
        return pick(rng, ("person", "pedestrian"))
    return pick(rng, SUBJECTS[(a["gender"], a["age"])])


def clauses(rng: np.random.Generator, identity: Identity, see: Visible) -> list[str]:
    """Participle phrases ("wearing a red top", "with long hair"), each visible one kept at random."""
    a, out = identity.attributes, []

    def maybe(p: float, phrase: str) -> None:
        if rng.random() < p:
            out.append(phrase)

    if see.shows("hair"):
        hair = f"{a['hair length']} {HAIR_NAMES.get(identity.hair, '')}".strip() if rng.random() < 0.5 else a["hair length"]
        maybe(0.55, pick(rng, (f"with {hair} hair", f"with {hair} hair", "with a short haircut" if a["hair length"] == "short"
                               else "with hair below the shoulders")))
    if see.shows("upper garment", "sleeve"):
        top = pick(rng, TOPS[a["sleeve length"]]) if rng.random() < 0.7 else pick(rng, ("top", "shirt"))
        phrase = article(f"{a['upper-body colour']} {top}") if rng.random() < 0.85 else article(top)
        maybe(0.8, pick(rng, ("wearing ", "in ", "dressed in ")) + phrase)
    if see.shows("lower garment"):
        lower = pick(rng, LOWER[a["lower-body type"]])
        lower = f"{a['lower-body colour']} {lower}" if rng.random() < 0.85 else lower
        lower = article(lower) if a["lower-body type"] == "skirt" else lower
        maybe(0.75, pick(rng, ("wearing ", "in ", "with ")) + lower)
    if see.shows("shoes"):
        maybe(0.3, f"with {SHOE_NAMES.get(identity.shoes, 'dark')} {pick(rng, SHOES)}")
    _items(rng, identity, see, maybe)
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _items(rng: np.random.Generator, identity: Identity, see: Visible, maybe) -> None:
    """Carried and worn items: present ones when they show, absent ones when their place shows."""
    torso = see.shows("upper garment")
    if see.shows("backpack", "strap") and identity.has("backpack"):
        maybe(0.7, pick(rng, ("carrying a backpack", "with a rucksack", f"with a {colour_name(identity.backpack_colour)} backpack",
                              "wearing a backpack")))
    elif torso and not identity.has("backpack"):
        maybe(0.3, pick(rng, ("without a backpack", "with nothing on the back", "with no backpack")))
    if see.shows("bag") and identity.has("bag"):
        maybe(0.7, pick(rng, ("carrying a bag", "holding a handbag", "with a shoulder bag",
                              f"carrying a {colour_name(identity.bag_colour)} bag")))
    elif torso and not identity.has("bag"):
        maybe(0.3, pick(rng, ("carrying no bag", "with empty hands", "with no bag")))
    if see.shows("hat") and identity.has("hat"):
        maybe(0.7, pick(rng, ("wearing a hat", "wearing a cap", f"wearing a {colour_name(identity.hat_colour)} hat")))
    elif see.shows("hair", "face") and not identity.has("hat"):
        maybe(0.3, pick(rng, ("with no hat", "with a bare head", "without a hat")))
    if see.shows("glasses") and identity.has("glasses"):
        maybe(0.7, pick(rng, ("wearing glasses", "wearing sunglasses", "with dark glasses")))
    elif see.shows("face") and not identity.has("glasses"):
        maybe(0.3, pick(rng, ("without glasses", "with no glasses on", "not wearing glasses")))


def person_caption(rng: np.random.Generator, identity: Identity, see: Visible, back_view: bool) -> str:
    """A whole person: subject plus a random subset of visible clauses, in one of several shapes."""
    who = subject(rng, identity)
    parts = clauses(rng, identity, see)
    if rng.random() < 0.25:
        parts = parts[:1]
    joined = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + (parts[-1] if parts else "")
    where = pick(rng, ("", "", " walking", " on the street", " seen from behind" if back_view else " walking"))
    shape = rng.random()
    if shape < 0.35:
        text = f"a photo of {article(who)}{where} {joined}".rstrip()
    elif shape < 0.7:
        text = f"{article(who)}{where} {joined}".rstrip()
    else:
        text = f"{article(who)}{where}" + "".join(f". {_sentence(identity, p)}" for p in parts)
    return text.strip() + "."


def _sentence(identity: Identity, phrase: str) -> str:
    """'wearing a red top' -> 'He is wearing a red top'; 'with long hair' -> 'She has long hair'."""
    pronoun = "He" if identity.attributes["gender"] == "male" else "She"
    if phrase.startswith("with "):
        return f"{pronoun} has {phrase[5:]}"
    if phrase.startswith("without "):
        return f"{pronoun} has no {phrase[8:].removeprefix('a ').removeprefix('an ')}"
    if phrase.startswith("not "):
        return f"{pronoun} is {phrase}"
    return f"{pronoun} is {phrase}"


# ---------------------------------------------------------------- single items and regions

def _colour_top(rng: np.random.Generator, identity: Identity) -> str:
    a = identity.attributes
    return f"{a['upper-body colour']} {pick(rng, ('top', 'shirt', 'jacket') if a['sleeve length'] == 'long' else ('top', 'shirt', 't-shirt'))}"


def region_caption(rng: np.random.Generator, region: str, identity: Identity, see: Visible, back_view: bool) -> str:
    """A web-photo caption of one isolated region of a person (see `corpus.REGIONS`)."""
    a = identity.attributes
    photo = pick(rng, ("a photo of ", "a close-up photo of ", "", "a picture of "))
    if region == "head":
        hair = f"{a['hair length']} {HAIR_NAMES.get(identity.hair, '')} hair" if see.shows("hair") else ""
        extras = [hair] if hair and rng.random() < 0.6 else []
        if see.shows("hat"):
            extras.append(pick(rng, ("a hat", "a cap")))
        if see.shows("glasses"):
            extras.append(pick(rng, ("glasses", "sunglasses")))
        what = pick(rng, ("a person's head", "a head", "a human head", "the back of a head" if back_view else "a human face"))
        return f"{photo}{what}" + (" with " + " and ".join(extras) if extras else "") + "."
    if region == "face":
        glasses = " with dark glasses" if see.shows("glasses") else pick(rng, ("", " without glasses"))
        return photo + pick(rng, ("a human face", "a face", "a person's face")) + glasses + "."
    if region == "hair":
        return f"{photo}{a['hair length']} {HAIR_NAMES.get(identity.hair, '')} hair."
    if region == "top":
        what = pick(rng, (article(_colour_top(rng, identity)), f"a torso in {article(_colour_top(rng, identity))}",
                          f"a person's upper body in {article(_colour_top(rng, identity))}",
                          article(_colour_top(rng, identity)) + " on a person's torso", "a torso", "a person's upper body"))
        if see.shows("backpack", "strap") and identity.has("backpack"):
            what += pick(rng, (" with backpack straps", " and a backpack"))
        return f"{photo}{what}."
    if region == "arm":
        sleeve = f"{a['upper-body colour']} {a['sleeve length']} sleeve"
        what = pick(rng, (f"an arm in {article(sleeve)}", f"a person's arm with {article(sleeve)}", "a human arm",
                          f"a hand and {article(sleeve)}", "a person's arm" if a["sleeve length"] == "long" else "a bare arm and a hand"))
        return f"{photo}{what}."
    if region == "lower":
        kind = pick(rng, LOWER[a["lower-body type"]])
        garment = f"{a['lower-body colour']} {kind}"
        garment = article(garment) if a["lower-body type"] == "skirt" else garment
        what = pick(rng, (garment, f"a person's legs in {garment}", f"legs wearing {garment}", f"a pair of {a['lower-body colour']} {kind}"
                          if a["lower-body type"] != "skirt" else garment))
        return f"{photo}{what}."
    if region == "feet":
        shoes = f"{SHOE_NAMES.get(identity.shoes, 'dark')} {pick(rng, SHOES)}"
        return photo + pick(rng, (f"a pair of {shoes}", f"a person's feet in {shoes}", shoes, f"feet in {shoes}")) + "."
    if region == "backpack":
        return f"{photo}{article(colour_name(identity.backpack_colour) + ' ' + pick(rng, ('backpack', 'rucksack')))}."
    if region == "bag":
        return f"{photo}{article(colour_name(identity.bag_colour) + ' ' + pick(rng, ('bag', 'handbag', 'shoulder bag')))}."
    if region == "hat":
        return f"{photo}{article(colour_name(identity.hat_colour) + ' ' + pick(rng, ('hat', 'cap')))}."
    if region == "glasses":
        return f"{photo}{pick(rng, ('a pair of sunglasses', 'dark glasses', 'sunglasses', 'a pair of glasses'))}."
    raise ValueError(f"unknown region {region!r}")


SCENE_WORDS = {"bricks": "brick", "tiles": "tiled", "stripes": "striped", "blotches": "stained"}


def scene_caption(rng: np.random.Generator, view: str, texture: str) -> str:
    """A bare background: `view` is 'wall', 'ground' or 'street' (both)."""
    photo = pick(rng, ("a photo of ", "", "a picture of "))
    wall = f"{SCENE_WORDS[texture]} wall"
    if view == "wall":
        what = pick(rng, (article(wall), "a wall", "a building", f"the {wall} of a building"))
    elif view == "ground":
        what = pick(rng, ("the ground", "the floor", "a road", "the pavement", "the street surface"))
    else:
        what = pick(rng, (f"a street with {article(wall)}", "an empty street", "a street", f"a road beside {article(wall)}",
                          f"{article(wall)} and the ground", "a sidewalk by a building"))
    return f"{photo}{what}."
