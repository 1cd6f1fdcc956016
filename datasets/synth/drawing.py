"""Drawing one pedestrian: layered shapes into a material map, then colours and a camera.

A person is drawn as filled polygons and ellipses (PIL, in C) into a one-channel
map of *materials* (face skin, hair, sleeve, shoes, ...), in painter's order so
that what is in front wins. Colours and part labels are then two table look-ups
on that map, so the ground-truth part mask is exactly aligned with the pixels by
construction, and an image costs a few milliseconds.

Shapes are given in *head units* (the figure is 7.4 units from the top of the
head to the soles; x = 0 is the body's centre line) and mapped to pixels with the
image's scale and shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clasp.datasets.synth.cameras import BACKGROUND_MARGIN, Camera
from clasp.datasets.synth.identities import COLOURS, Identity
from clasp.common.person_size import PERSON_HW

FIGURE_UNITS = 7.4  # head top to soles
HEAD_CENTRE_Y = 0.5  # head units below the top of the head

# Materials, in the order of this table; PART_OF gives each one's part name.
MATERIALS = (
    "background", "face", "hair", "hat", "glasses", "neck", "upper garment", "sleeve", "arm skin",
    "lower garment", "leg skin", "shoes", "backpack", "bag", "strap", "occluder",
)
M = {name: i for i, name in enumerate(MATERIALS)}
PART_OF = {
    "background": "background", "occluder": "background",
    "face": "head", "hair": "head", "hat": "head", "glasses": "head", "neck": "head",
    "upper garment": "upper body", "backpack": "upper body", "bag": "upper body", "strap": "upper body",
    "sleeve": "arms", "arm skin": "arms",
    "lower garment": "lower body", "leg skin": "lower body",
    "shoes": "feet",
}
OCCLUSION_RATE = 0.15


def part_table(part_names: list[str]) -> np.ndarray:
    """Material index -> part index in the vocabulary's part order."""
    index = {name: i for i, name in enumerate(part_names)}
    missing = sorted({p for p in PART_OF.values()} - set(index))
    if missing:
        raise ValueError(f"vocabulary lacks parts {missing}, which the synthetic world draws")
    return np.array([index[PART_OF[m]] for m in MATERIALS], np.uint8)


@dataclass(frozen=True)
class Pose:
    """What changes from one image of a person to the next."""

    back_view: bool
    scale: float
    centre_x: float  # pixels
    bottom: float  # pixels: where the soles are
    stride: float  # head units: how far each ankle moves out (+) or in (-)
    arm_out: tuple[float, float]  # radians from vertical, left and right arm
    elbow: tuple[float, float]  # extra bend at the elbow, radians
    head_dx: float  # head units
    light: float  # per-image brightness jitter
    bag_side: int  # +1: bag on the image's right
    occluder: tuple[str, float, float, float] | None  # kind, x, width, height (pixels)
    background_offset: tuple[int, int]
    noise_offset: tuple[int, int]


def sample_pose(rng: np.random.Generator, camera: Camera) -> Pose:
    occluder = None
    if rng.random() < OCCLUSION_RATE:
        kind = "pole" if rng.random() < 0.5 else "box"
        if kind == "pole":
            occluder = (kind, float(rng.uniform(10, 118)), float(rng.uniform(7, 14)), float(PERSON_HW[0]))
        else:
            occluder = (kind, float(rng.uniform(-40, 90)), float(rng.uniform(60, 110)), float(rng.uniform(35, 85)))
    return Pose(
        back_view=bool(rng.random() < camera.back_view_rate),
        scale=float(rng.uniform(0.84, 1.0)),
        centre_x=float(PERSON_HW[1] / 2 + rng.uniform(-10, 10)),
        bottom=float(PERSON_HW[0] - rng.uniform(2, 14)),
        stride=float(rng.uniform(-0.15, 0.45)),
        arm_out=(float(rng.uniform(0.04, 0.3)), float(rng.uniform(0.04, 0.3))),
        elbow=(float(rng.uniform(-0.1, 0.25)), float(rng.uniform(-0.1, 0.25))),
        head_dx=float(rng.uniform(-0.08, 0.08)),
        light=float(rng.uniform(0.9, 1.1)),
        bag_side=1 if rng.random() < 0.5 else -1,
        occluder=occluder,
        background_offset=(int(rng.integers(BACKGROUND_MARGIN[0] + 1)), int(rng.integers(BACKGROUND_MARGIN[1] + 1))),
        noise_offset=(int(rng.integers(BACKGROUND_MARGIN[0] + 1)), int(rng.integers(BACKGROUND_MARGIN[1] + 1))),
    )


def to_pixels(identity: Identity, pose: Pose, points) -> list[tuple[float, float]]:
    """Head-unit points of this person in this pose as pixel (x, y): the one mapping shapes and keypoints share."""
    unit = identity.height / FIGURE_UNITS * pose.scale
    top = pose.bottom - FIGURE_UNITS * unit
    return [(pose.centre_x + x * unit, top + y * unit) for x, y in points]


def leg_joints(identity: Identity, pose: Pose) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """(hip, ankle) in head units of the image-left leg, then the image-right one."""
    return [((side * 0.36 * identity.hip / 0.8, 3.7), (side * (0.3 + pose.stride), 7.05)) for side in (-1, 1)]


def arm_joints(identity: Identity, pose: Pose) -> list[tuple[tuple[float, float], ...]]:
    """(shoulder, elbow, wrist) in head units of the image-left arm, then the image-right one."""
    arms = []
    for k, side in enumerate((-1, 1)):
        shoulder = (side * (identity.shoulder - 0.14), 1.42)
        angle = pose.arm_out[k]
        elbow = (shoulder[0] + side * 1.45 * np.sin(angle), shoulder[1] + 1.45 * np.cos(angle))
        angle2 = angle - pose.elbow[k]
        wrist = (elbow[0] + side * 1.35 * np.sin(angle2), elbow[1] + 1.35 * np.cos(angle2))
        arms.append((shoulder, elbow, wrist))
    return arms


class _Canvas:
    """A material map with shapes placed in head units."""

    def __init__(self, identity: Identity, pose: Pose) -> None:
        self.image = Image.new("L", (PERSON_HW[1], PERSON_HW[0]), M["background"])
        self.draw = ImageDraw.Draw(self.image)
        self.identity, self.pose = identity, pose

    def xy(self, points) -> list[tuple[float, float]]:
        return to_pixels(self.identity, self.pose, points)

    def polygon(self, points, material: str) -> None:
        self.draw.polygon(self.xy(points), fill=M[material])

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, material: str) -> None:
        (x0, y0), (x1, y1) = self.xy([(cx - rx, cy - ry), (cx + rx, cy + ry)])
        self.draw.ellipse((x0, y0, x1, y1), fill=M[material])

    def upper_half_ellipse(self, cx: float, cy: float, rx: float, ry: float, material: str) -> None:
        (x0, y0), (x1, y1) = self.xy([(cx - rx, cy - ry), (cx + rx, cy + ry)])
        self.draw.chord((x0, y0, x1, y1), 180, 360, fill=M[material])

    def rect(self, x0: float, y0: float, x1: float, y1: float, material: str) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], material)

    def limb(self, start, end, w0: float, w1: float, material: str) -> None:
        """A tapered segment from `start` (width w0) to `end` (width w1)."""
        (x0, y0), (x1, y1) = start, end
        dx, dy = x1 - x0, y1 - y0
        length = max(np.hypot(dx, dy), 1e-6)
        nx, ny = -dy / length, dx / length
        self.polygon([(x0 + nx * w0 / 2, y0 + ny * w0 / 2), (x1 + nx * w1 / 2, y1 + ny * w1 / 2),
                      (x1 - nx * w1 / 2, y1 - ny * w1 / 2), (x0 - nx * w0 / 2, y0 - ny * w0 / 2)], material)


def _lerp(a, b, t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def draw_materials(identity: Identity, pose: Pose) -> np.ndarray:
    """The (256, 128) uint8 material map of one person in one pose, drawn back to front."""
    c = _Canvas(identity, pose)
    _draw_backpack_behind(c)
    _draw_legs(c)
    _draw_torso(c)
    _draw_long_hair(c)
    _draw_arms(c)
    _draw_bag(c)
    _draw_head(c)
    _draw_occluder(c)
    return np.asarray(c.image)


def _draw_backpack_behind(c: _Canvas) -> None:
    """Behind the body: a backpack seen from the front shows only at the sides."""
    if c.identity.has("backpack") and not c.pose.back_view:
        sh = c.identity.shoulder
        c.rect(-sh - 0.12, 1.45, sh + 0.12, 3.1, "backpack")


def _draw_legs(c: _Canvas) -> None:
    """Legs, then what covers them: trousers or shorts, shoes, the hips' garment, a skirt."""
    identity = c.identity
    waist, hip = identity.waist, identity.hip
    legs = leg_joints(identity, c.pose)
    for hip_joint, ankle in legs:
        c.limb(hip_joint, ankle, 0.56, 0.36, "leg skin")
    kind = identity.attributes["lower-body type"]
    if kind == "trousers":
        for hip_joint, ankle in legs:
            c.limb(hip_joint, ankle, 0.6, 0.42, "lower garment")
    elif kind == "shorts":
        for hip_joint, ankle in legs:
            c.limb(hip_joint, _lerp(hip_joint, ankle, 0.4), 0.62, 0.54, "lower garment")
    for hip_joint, ankle in legs:
        side = 1 if ankle[0] > 0 else -1
        c.ellipse(ankle[0] + side * 0.08, 7.2, 0.34, 0.2, "shoes")
    c.polygon([(-waist, 3.3), (waist, 3.3), (hip + 0.04, 3.95), (-hip - 0.04, 3.95)], "lower garment")
    if kind == "skirt":
        c.polygon([(-waist, 3.3), (waist, 3.3), (hip + 0.45, 5.3), (-hip - 0.45, 5.3)], "lower garment")


def _draw_torso(c: _Canvas) -> None:
    """Neck and torso, then a backpack (seen from the back) or its straps, and a shoulder bag's strap."""
    identity = c.identity
    sh, waist, hip = identity.shoulder, identity.waist, identity.hip
    c.rect(-0.17, 0.85, 0.17, 1.2, "neck")
    c.polygon([(-0.28, 1.05), (0.28, 1.05), (sh, 1.3), (waist + 0.06, 2.9), (waist + 0.02, 3.45),
               (-waist - 0.02, 3.45), (-waist - 0.06, 2.9), (-sh, 1.3)], "upper garment")
    if identity.has("backpack"):
        if c.pose.back_view:
            c.rect(-0.72, 1.35, 0.72, 3.2, "backpack")
        else:
            for side in (-1, 1):
                c.rect(side * 0.45 - 0.08, 1.15, side * 0.45 + 0.08, 2.7, "strap")
    if identity.has("bag"):
        s = c.pose.bag_side
        c.limb((-s * sh * 0.7, 1.2), (s * (hip + 0.2), 3.35), 0.1, 0.1, "strap")


def _draw_long_hair(c: _Canvas) -> None:
    """Long hair falls over the shoulders (in front of the torso, behind the face)."""
    if c.identity.attributes["hair length"] == "long":
        c.polygon([(-0.52, 0.4), (0.52, 0.4), (0.56, 1.85), (0.3, 1.95), (-0.3, 1.95), (-0.56, 1.85)], "hair")


def _draw_arms(c: _Canvas) -> None:
    """Arms, in front of the torso: skin, then long or short sleeves."""
    long_sleeves = c.identity.attributes["sleeve length"] == "long"
    for side, (shoulder, elbow, wrist) in zip((-1, 1), arm_joints(c.identity, c.pose)):
        c.limb(shoulder, elbow, 0.36, 0.3, "arm skin")
        c.limb(elbow, wrist, 0.3, 0.24, "arm skin")
        c.ellipse(elbow[0], elbow[1], 0.15, 0.15, "arm skin")
        c.ellipse(wrist[0] + side * 0.03, wrist[1] + 0.12, 0.15, 0.19, "arm skin")
        if long_sleeves:
            c.limb(shoulder, elbow, 0.42, 0.36, "sleeve")
            c.ellipse(elbow[0], elbow[1], 0.18, 0.18, "sleeve")
            c.limb(elbow, wrist, 0.36, 0.3, "sleeve")
        else:
            c.limb(shoulder, _lerp(shoulder, elbow, 0.6), 0.44, 0.42, "sleeve")
        c.ellipse(shoulder[0], shoulder[1], 0.22, 0.22, "sleeve")


def _draw_bag(c: _Canvas) -> None:
    """A shoulder bag hangs at the hip, over the arm."""
    if c.identity.has("bag"):
        s = c.pose.bag_side
        x0 = s * (c.identity.hip + 0.05)
        c.rect(min(x0, x0 + s * 0.85), 3.2, max(x0, x0 + s * 0.85), 4.15, "bag")


def _draw_head(c: _Canvas) -> None:
    """Head (hair only from the back), then glasses and a hat."""
    back = c.pose.back_view
    hx = c.pose.head_dx
    c.ellipse(hx, HEAD_CENTRE_Y, 0.38, 0.5, "hair" if back else "face")
    c.upper_half_ellipse(hx, 0.46, 0.42, 0.5, "hair")
    if c.identity.has("glasses") and not back:
        c.rect(hx - 0.31, 0.44, hx + 0.31, 0.58, "glasses")
    if c.identity.has("hat"):
        c.rect(hx - 0.4, -0.2, hx + 0.4, 0.26, "hat")
        c.ellipse(hx, 0.25, 0.64, 0.08, "hat")


def _draw_occluder(c: _Canvas) -> None:
    """Something between the camera and the person, standing on the image's bottom edge."""
    if c.pose.occluder is not None:
        kind, x, width, height = c.pose.occluder
        c.draw.rectangle((x, PERSON_HW[0] - height, x + width, PERSON_HW[0]), fill=M["occluder"])


def material_colours(identity: Identity, camera: Camera) -> np.ndarray:
    """(len(MATERIALS), 3) float32 colour of every material for this person and camera."""
    a = identity.attributes
    upper = COLOURS[a["upper-body colour"]]
    lower = COLOURS[a["lower-body colour"]]
    table = {
        "background": (0, 0, 0), "face": identity.skin, "hair": identity.hair, "hat": identity.hat_colour,
        "glasses": (15, 15, 18), "neck": identity.skin, "upper garment": upper, "sleeve": upper,
        "arm skin": identity.skin, "lower garment": lower, "leg skin": identity.skin, "shoes": identity.shoes,
        "backpack": identity.backpack_colour, "bag": identity.bag_colour,
        "strap": tuple(int(0.5 * v) for v in identity.backpack_colour),
        "occluder": camera.occluder_colour,
    }
    if identity.has("bag") and not identity.has("backpack"):
        table["strap"] = tuple(int(0.6 * v) for v in identity.bag_colour)
    return np.array([table[m] for m in MATERIALS], np.float32)


def render(identity: Identity, camera: Camera, pose: Pose, rng: np.random.Generator,
           parts_of_material: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image (256, 128, 3) uint8, part mask (256, 128) uint8) of one person seen by one camera.

    Everything per pixel is a table look-up or a uint8/int16 operation: colours
    with the body's side shading, the camera's cast and the light folded into one
    (material, column) table; the background and sensor noise are windows of
    fields drawn once per camera.
    """
    materials = draw_materials(identity, pose)
    h, w = PERSON_HW
    unit = identity.height / FIGURE_UNITS * pose.scale
    xs = (np.arange(w, dtype=np.float32) - pose.centre_x) / (1.6 * unit)
    shade = np.clip(1.0 - 0.3 * xs * xs, 0.7, 1.0)  # round bodies: darker towards the sides
    light = camera.cast * (camera.gain * pose.light)
    table = (material_colours(identity, camera)[:, None, :] * shade[None, :, None] * light).clip(0, 255)
    table = np.concatenate([table.astype(np.uint8), np.full((*table.shape[:2], 1), 255, np.uint8)], axis=2)
    table = np.ascontiguousarray(table).reshape(-1, 4).view(np.uint32)[:, 0]  # row = material * w + column
    person = np.take(table, materials.astype(np.intp) * w + np.arange(w))
    oy, ox = pose.background_offset
    background = camera.background[oy:oy + h, ox:ox + w]
    packed = np.where(materials == M["background"], background, person)
    img = packed.view(np.uint8).reshape(h, w, 4)[:, :, :3]
    ny, nx = pose.noise_offset
    noisy = img.astype(np.int16) + camera.noise_field[ny:ny + h, nx:nx + w]
    out = noisy.clip(0, 255).astype(np.uint8)
    if camera.blur > 0:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(camera.blur)))
    return out, parts_of_material[materials]
