"""Seeded cartoon microscopy of single blood cells from several patients, with a clinical table.

Real labelled multi-patient cell images are scarce offline, so the image demo and its tests run
on cartoons drawn with numpy. What a classifier has to learn, and what can mislead it:

- **Cell type** sets the cell's size and outline, the nucleus shape (round, multi-lobed,
  kidney-shaped, bilobed, ...) and the cytoplasm's colour and granules.
- **Cell state** is drawn independently of the type: the first state adds nothing; the second
  (``damaged``) adds membrane blebs and mostly breaks the nucleus into fragments; the third
  (``malignant``) enlarges the nucleus, roughens its outline and darkens it. Per-cell jitter in
  position, rotation, size and effect strength makes the classes overlap.
- **Patients** differ in stain (colour of nucleus and cytoplasm), brightness, focus (blur) and in
  how common each state is (Dirichlet prevalence); some type×state pairs can be absent.
- **Clinical table**, constant within a patient: age, sex, a lab value (``crp``, rising with the
  patient's damaged share), symptoms (``fever;cough``) and ``sample_code``, distinct per patient
  and rising with its malignant share: a model can use it to recognise patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from biocls._errors import BioclsError

__all__ = ["simulate_images"]

#: built-in morphologies, given to the type names in order (cycled when there are more names):
#: lymphocyte, neutrophil, monocyte, eosinophil, basophil-like, plasma-cell-like
_MORPHOLOGIES = ("round", "lobed", "kidney", "bilobed_granular", "dark_granular", "eccentric")
#: cytoplasm colour (RGB, 0-1) per morphology
_CYTOPLASM = {"round": (0.72, 0.76, 0.93), "lobed": (0.92, 0.78, 0.86),
              "kidney": (0.74, 0.74, 0.86), "bilobed_granular": (0.97, 0.80, 0.74),
              "dark_granular": (0.80, 0.74, 0.90), "eccentric": (0.52, 0.60, 0.86)}
#: cell radius as a share of the image side
_RADIUS = {"round": 0.25, "lobed": 0.33, "kidney": 0.40, "bilobed_granular": 0.34,
           "dark_granular": 0.29, "eccentric": 0.37}
#: granules per morphology: (count range, radius as a share of the side, RGB, over the nucleus)
_GRANULES = {"lobed": ((50, 90), 0.010, (0.62, 0.42, 0.62), False),
             "bilobed_granular": ((30, 50), 0.020, (0.93, 0.42, 0.16), False),
             "dark_granular": ((25, 40), 0.020, (0.26, 0.12, 0.40), True)}
#: built-in state effects; the first state takes "none", later ones the rest in order (cycled)
_STATE_EFFECTS = ("none", "damaged", "malignant", "apoptotic", "swollen")
_BACKGROUND = (0.93, 0.87, 0.86)  # pale pink plasma
_NUCLEUS = (0.38, 0.22, 0.52)
_SYMPTOMS = ("fever", "cough", "fatigue", "weight_loss", "rash")
_SUPERSAMPLE = 3  # drawn at 3× and averaged down: smooth edges at 32 px


def simulate_images(out: str | Path, *, n_patients: int = 12, images_per_patient: int = 60,
                    size: int = 32,
                    types: Sequence[str] = ("lymphocyte", "neutrophil", "monocyte",
                                            "eosinophil"),
                    states: Sequence[str] = ("healthy", "damaged", "malignant"),
                    absent_combinations: Sequence[tuple[str, str]] = (),
                    absent_in_patients: Sequence[str] | None = None,
                    stain_sd: float = 0.06, brightness_sd: float = 0.06, blur_max: float = 1.0,
                    noise_sd: float = 0.03, state_prevalence_concentration: float = 4.0,
                    healthy_share: float = 0.6, clinical: bool = True,
                    seed: int = 0) -> pd.DataFrame:
    """Write ``out/manifest.tsv`` and ``out/images/<patient>/<patient>_<k>.png``; return the
    manifest (columns ``image``, relative to ``out``, ``patient``, ``cell_type``,
    ``cell_state``, then ``age``, ``sex``, ``crp``, ``symptoms``, ``sample_code``).

    Options:

    - ``n_patients``: number of patients, named P01, P02, ... (at least 2).
    - ``images_per_patient``: images per patient; cell types are balanced within a patient.
    - ``size``: pixels per side of the RGB images (at least 16).
    - ``types``: cell type names; they take the built-in morphologies in order (cycled).
    - ``states``: cell state names; the first is the baseline, the rest take the built-in
      effects (damaged, malignant, apoptotic, swollen) in order (cycled).
    - ``absent_combinations``: (type, state) pairs never drawn in ``absent_in_patients``.
    - ``absent_in_patients``: patients missing those pairs (default: every patient).
    - ``stain_sd``: per-patient spread of the stain's colour factors (0: same stain).
    - ``brightness_sd``: per-patient spread of the brightness offset.
    - ``blur_max``: each patient's focus blur (Gaussian sigma, pixels) is uniform up to this.
    - ``noise_sd``: per-pixel noise.
    - ``state_prevalence_concentration``: Dirichlet concentration of each patient's state shares
      (smaller: patients differ more).
    - ``healthy_share``: mean share of the first (baseline) state.
    - ``clinical``: add the per-patient clinical columns.
    - ``seed``: everything is drawn from it; each patient from its own stream ``(seed, index)``,
      so adding patients leaves the earlier ones unchanged.

    The folder is written whole or not at all; an existing ``out`` is replaced.
    """
    from PIL import Image

    from biocls._io import atomic_path

    types, states = [str(t) for t in types], [str(s) for s in states]
    width = max(2, len(str(n_patients)))
    patients = [f"P{i + 1:0{width}d}" for i in range(n_patients)]
    absent = {(str(t), str(s)) for t, s in absent_combinations}
    _check(n_patients, images_per_patient, types, states, size, absent, absent_in_patients,
           patients, {"stain_sd": stain_sd, "brightness_sd": brightness_sd,
                      "blur_max": blur_max, "noise_sd": noise_sd},
           state_prevalence_concentration, healthy_share)
    absent_in = set(patients if absent_in_patients is None else absent_in_patients)
    effects = [_state_effect(j) for j in range(len(states))]
    base = np.full(len(states), (1 - healthy_share) / max(len(states) - 1, 1))
    base[0] = healthy_share if len(states) > 1 else 1.0
    rows: list[dict[str, object]] = []
    codes: set[float] = set()
    with atomic_path(out) as tmp:
        for i, patient in enumerate(patients):
            rng = np.random.default_rng([seed, i])
            look = _patient_look(rng, stain_sd, brightness_sd, blur_max)
            prevalence = rng.dirichlet(state_prevalence_concentration * len(states) * base)
            prevalence = np.maximum(prevalence, 1e-12)  # a Dirichlet draw can underflow to 0
            record = _clinical(rng, prevalence, effects, codes)  # drawn either way: same images
            if not clinical:
                record = {}
            folder = tmp / "images" / patient
            folder.mkdir(parents=True)
            cell_types = rng.permutation(np.resize(np.arange(len(types)), images_per_patient))
            for k, t in enumerate(cell_types):
                p = prevalence.copy()
                if patient in absent_in:
                    p[[(types[t], s) in absent for s in states]] = 0.0
                s = int(rng.choice(len(states), p=p / p.sum()))
                morph = _MORPHOLOGIES[t % len(_MORPHOLOGIES)]
                pixels = _draw(rng, size, morph, effects[s], look, noise_sd)
                name = f"images/{patient}/{patient}_{k:04d}.png"
                Image.fromarray(pixels).save(tmp / name)
                rows.append({"image": name, "patient": patient, "cell_type": types[t],
                             "cell_state": states[s], **record})
        manifest = pd.DataFrame(rows)
        manifest.to_csv(tmp / "manifest.tsv", sep="\t", index=False)
    return manifest


def _state_effect(j: int) -> str:
    """The built-in effect of the ``j``-th state: the first is the baseline, the rest cycle."""
    return "none" if j == 0 else _STATE_EFFECTS[1 + (j - 1) % (len(_STATE_EFFECTS) - 1)]


def _check(n_patients: int, images_per_patient: int, types: list[str], states: list[str],
           size: int, absent: set[tuple[str, str]], absent_in: Sequence[str] | None,
           patients: list[str], spreads: dict[str, float], concentration: float,
           healthy_share: float) -> None:
    """Refuse options that would give an empty, unlearnable or ill-defined cohort."""
    where = "simulate images"
    if n_patients < 2:
        raise BioclsError(f"n_patients is {n_patients}", where=f"{where}: n_patients",
                          fix="use at least 2 patients (patient-level splits need them)")
    if images_per_patient < 1:
        raise BioclsError(f"images_per_patient is {images_per_patient}",
                          where=f"{where}: images_per_patient", fix="use at least 1")
    if len(types) < 2 or len(set(types)) != len(types):
        raise BioclsError(f"types {types}: need at least 2 distinct cell types",
                          where=f"{where}: types", fix="name at least 2 distinct types")
    if not states or len(set(states)) != len(states):
        raise BioclsError(f"states {states}: need at least 1 state, names distinct",
                          where=f"{where}: states", fix="name distinct states")
    if size < 16:
        raise BioclsError(f"size is {size}", where=f"{where}: size",
                          fix="use at least 16 pixels per side")
    for name, value in spreads.items():
        if not value >= 0:
            raise BioclsError(f"{name} is {value}", where=f"{where}: {name}",
                              fix="use a value >= 0")
    if not concentration > 0:
        raise BioclsError(f"state_prevalence_concentration is {concentration}",
                          where=f"{where}: state_prevalence_concentration",
                          fix="use a value > 0")
    if not 0 < healthy_share < 1:
        raise BioclsError(f"healthy_share is {healthy_share}", where=f"{where}: healthy_share",
                          fix="use a share between 0 and 1")
    for t, s in sorted(absent):
        if t not in types or s not in states:
            raise BioclsError(f"absent combination ({t}, {s}) names an unknown type or state",
                              where=f"{where}: absent_combinations",
                              fix=f"types are {types}, states {states}")
    for t in types:
        if all((t, s) in absent for s in states):
            raise BioclsError(f"absent_combinations remove every state of type {t}",
                              where=f"{where}: absent_combinations",
                              fix=f"leave at least one state of {t}")
    unknown = sorted(set(absent_in or ()) - set(patients))
    if unknown:
        raise BioclsError(f"absent_in_patients names unknown patients {unknown}",
                          where=f"{where}: absent_in_patients",
                          fix=f"patients are {patients[0]}…{patients[-1]}")


def _patient_look(rng: np.random.Generator, stain_sd: float, brightness_sd: float,
                  blur_max: float) -> dict[str, float | np.ndarray]:
    """One patient's slide: stain factors per channel, brightness, focus. Draws are kept within
    2.5 sd, so that no slide is washed out to white."""
    def factor(sd: float) -> np.ndarray:
        return 1.0 + np.clip(rng.normal(0.0, 1.0, 3), -2.5, 2.5) * sd

    return {"stain": factor(stain_sd), "nucleus_stain": factor(stain_sd),
            "background": np.minimum(factor(stain_sd / 2), 1.06),
            "brightness": float(np.clip(rng.normal(0.0, 1.0), -2.5, 2.5) * brightness_sd),
            "blur": float(rng.uniform(0.0, blur_max))}


def _clinical(rng: np.random.Generator, prevalence: np.ndarray, effects: list[str],
              codes: set[float]) -> dict[str, object]:
    """One patient's clinical record, tied to its state shares; ``codes`` keeps codes distinct."""
    def share(effect: str) -> float:
        return float(sum(p for p, e in zip(prevalence, effects, strict=True) if e == effect))

    damaged, malignant = share("damaged"), share("malignant")
    p_symptom = {"fever": 0.1 + 0.8 * damaged, "cough": 0.3, "fatigue": 0.25 + 0.5 * malignant,
                 "weight_loss": 0.05 + 0.6 * malignant, "rash": 0.1}
    symptoms = [s for s in _SYMPTOMS if rng.random() < min(p_symptom[s], 0.95)]
    age, sex = int(rng.integers(25, 86)), str(rng.choice(["F", "M"]))
    crp = round(max(0.1, 5.0 + 80.0 * damaged + float(rng.normal(0.0, 5.0))), 1)
    # rises with the malignant share; nudged by 0.001 past codes of earlier patients, so it is
    # distinct per patient and still unaffected by later ones
    code = round(10.0 * malignant + float(rng.normal(0.0, 0.05)), 3)
    while code in codes:
        code = round(code + 0.001, 3)
    codes.add(code)
    return {"age": age, "sex": sex, "crp": crp, "symptoms": ";".join(symptoms),
            "sample_code": code}


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _segment(yy: np.ndarray, xx: np.ndarray, a: tuple[float, float], b: tuple[float, float],
             half_width: float) -> np.ndarray:
    """Pixels within ``half_width`` of the segment a–b: the strands joining nuclear lobes."""
    (ay, ax), (by, bx) = a, b
    vy, vx = by - ay, bx - ax
    t = np.clip(((yy - ay) * vy + (xx - ax) * vx) / max(vy * vy + vx * vx, 1e-9), 0, 1)
    return (yy - ay - t * vy) ** 2 + (xx - ax - t * vx) ** 2 <= half_width ** 2


def _blotches(rng: np.random.Generator, n: int, block: int) -> np.ndarray:
    """A blotchy field around 0 (sd 1) at ``n × n`` in ``block``-pixel patches: chromatin clumps,
    cytoplasm texture (supersampling and blur soften the patches' edges)."""
    k = -(-n // block)
    coarse = rng.normal(0.0, 1.0, (k, k))
    return np.repeat(np.repeat(coarse, block, 0), block, 1)[:n, :n]


def _draw(rng: np.random.Generator, size: int, morph: str, effect: str,
          look: dict[str, float | np.ndarray], noise_sd: float) -> np.ndarray:
    """One cell as uint8 ``[size, size, 3]``, drawn supersampled and averaged down."""
    from scipy import ndimage

    n = size * _SUPERSAMPLE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    cy, cx = n / 2 + rng.normal(0, n * 0.05, 2)
    r = _RADIUS[morph] * n * rng.uniform(0.88, 1.12)
    if effect == "apoptotic":
        r *= 0.8
    elif effect == "swollen":
        r *= 1.18
    angle = rng.uniform(0, 2 * np.pi)
    # the outline: a squashed, rotated disc with a slightly wavy membrane
    squash = rng.uniform(0.82, 1.0)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    theta = np.arctan2(v, u)
    wave = 1 + 0.03 * np.sin(4 * theta + rng.uniform(0, 6.3))
    cell = (u / r) ** 2 + (v / (r * squash)) ** 2 <= wave ** 2
    if effect == "damaged":  # membrane blebs, a few to many
        for a in rng.uniform(0, 2 * np.pi, int(rng.integers(2, 8))):
            by, bx = cy + r * 0.95 * np.sin(a), cx + r * 0.95 * np.cos(a)
            cell |= _disc(yy, xx, by, bx, r * rng.uniform(0.12, 0.28))
    nucleus = _nucleus(rng, yy, xx, (cy, cx), r, angle, morph, effect) & cell
    img = np.empty((n, n, 3), dtype=np.float32)
    img[:] = np.asarray(_BACKGROUND) * look["background"]
    cytoplasm = np.asarray(_CYTOPLASM[morph]) * look["stain"]
    if effect == "swollen":  # pale, watery cytoplasm
        cytoplasm = 1 - 0.6 * (1 - cytoplasm)
    texture = 1 + 0.04 * _blotches(rng, n, 3 * _SUPERSAMPLE)
    img[cell] = cytoplasm * texture[cell, None]
    if morph == "eccentric":  # the pale Golgi zone beside the nucleus
        halo = _disc(yy, xx, cy - r * 0.05 * np.sin(angle), cx - r * 0.05 * np.cos(angle),
                     r * 0.38) & cell
        img[halo] = 1 - 0.5 * (1 - img[halo])
    if morph == "kidney":  # a few pale vacuoles
        for _ in range(int(rng.integers(0, 4))):
            vy, vx = rng.uniform(-0.7, 0.7, 2) * r
            img[_disc(yy, xx, cy + vy, cx + vx, n * 0.02) & cell] = (0.90, 0.90, 0.95)
    granules = _granules(rng, n, (cy, cx), r, morph) & cell
    over = morph in _GRANULES and _GRANULES[morph][3]  # dark granules hide the nucleus
    darkness = rng.uniform(0.6, 0.8) if effect in ("malignant", "apoptotic") else 1.0
    if effect == "swollen":
        darkness = 1.25
    chromatin = 1 + 0.12 * _blotches(rng, n, 2 * _SUPERSAMPLE)
    nucleus_rgb = np.asarray(_NUCLEUS) * look["nucleus_stain"] * darkness
    if morph in _GRANULES and not over:
        img[granules] = _GRANULES[morph][2]
    img[nucleus] = nucleus_rgb * chromatin[nucleus, None]
    if effect == "malignant" and rng.random() < 0.6:  # a prominent pale nucleolus
        ys, xs = np.nonzero(nucleus)
        if len(ys):
            j = int(rng.integers(len(ys)))
            dot = _disc(yy, xx, ys[j], xs[j], n * 0.03) & nucleus
            img[dot] = 0.5 * img[dot] + 0.5 * np.asarray(_CYTOPLASM[morph])
    if over:
        img[granules] = _GRANULES[morph][2]
    img = img.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean((1, 3))
    if look["blur"] > 0.05:
        img = ndimage.gaussian_filter(img, sigma=(look["blur"], look["blur"], 0))
    img = img + look["brightness"] + rng.normal(0.0, noise_sd, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _granules(rng: np.random.Generator, n: int, centre: tuple[float, float], r: float,
              morph: str) -> np.ndarray:
    """Granule mask: points scattered over the cell, grown into dots in one dilation."""
    from scipy import ndimage

    points = np.zeros((n, n), dtype=bool)
    if morph not in _GRANULES:
        return points
    (low, high), radius, _, _ = _GRANULES[morph]
    k = int(rng.integers(low, high))
    rho, phi = r * np.sqrt(rng.uniform(0, 1, k)), rng.uniform(0, 2 * np.pi, k)
    ys = np.clip(np.round(centre[0] + rho * np.sin(phi)).astype(int), 0, n - 1)
    xs = np.clip(np.round(centre[1] + rho * np.cos(phi)).astype(int), 0, n - 1)
    points[ys, xs] = True
    g = max(int(round(radius * n)), 1)
    gy, gx = np.mgrid[-g:g + 1, -g:g + 1]
    return ndimage.binary_dilation(points, structure=gy ** 2 + gx ** 2 <= g * g)


def _nucleus(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
             centre: tuple[float, float], r: float, angle: float, morph: str,
             effect: str) -> np.ndarray:
    """The nucleus mask: its shape is the type's; malignant enlarges and roughens it, damaged
    (mostly) breaks it into fragments, apoptotic condenses it into a small dense ball."""
    cy, cx = centre
    grow = rng.uniform(0.9, 1.1)
    if effect == "malignant":
        grow *= rng.uniform(1.2, 1.5)
    dy, dx = np.sin(angle), np.cos(angle)
    bridges: list[tuple[tuple[float, float], tuple[float, float]]] = []
    if morph in ("round", "dark_granular"):
        off = rng.normal(0, r * 0.06, 2)
        parts = [(cy + off[0], cx + off[1], r * (0.78 if morph == "round" else 0.5) * grow)]
    elif morph == "eccentric":  # off-centre round nucleus
        parts = [(cy + r * 0.4 * dy, cx + r * 0.4 * dx, r * 0.45 * grow)]
    elif morph == "lobed":  # 3-5 lobes along an arc, joined by thin strands
        arc = np.linspace(-1.7, 1.7, int(rng.integers(3, 6)))
        parts = [(cy + r * 0.45 * np.sin(angle + a), cx + r * 0.45 * np.cos(angle + a),
                  r * 0.21 * grow) for a in arc]
    elif morph == "bilobed_granular":
        parts = [(cy + s * r * 0.36 * dy, cx + s * r * 0.36 * dx, r * 0.27 * grow)
                 for s in (-1, 1)]
    else:  # kidney: a large disc with a bite taken out of one side
        parts = [(cy, cx, r * 0.58 * grow)]
    if len(parts) > 1:
        bridges = [((a[0], a[1]), (b[0], b[1])) for a, b in zip(parts, parts[1:], strict=False)]
    if effect == "apoptotic":  # pyknosis: one small condensed ball
        parts, bridges = [(cy, cx, r * rng.uniform(0.3, 0.4))], []
    elif effect == "damaged" and rng.random() < 0.8:  # karyorrhexis: fragments in the cell
        frags = []
        for py, px, pr in parts:
            for _ in range(int(rng.integers(2, 5))):
                off = rng.normal(0, r * 0.22, 2)
                frags.append((py + off[0], px + off[1], pr * rng.uniform(0.25, 0.42)))
        parts, bridges = frags, []
    mask = np.zeros(yy.shape, dtype=bool)
    for py, px, pr in parts:
        if effect == "malignant":  # irregular outline: the radius wobbles with the angle
            theta = np.arctan2(yy - py, xx - px)
            wobble = (1 + 0.16 * np.sin(3 * theta + rng.uniform(0, 6.3))
                      + 0.09 * np.sin(5 * theta + rng.uniform(0, 6.3)))
            mask |= (yy - py) ** 2 + (xx - px) ** 2 <= (pr * wobble) ** 2
        else:
            mask |= _disc(yy, xx, py, px, pr)
    for a, b in bridges:
        mask |= _segment(yy, xx, a, b, r * 0.06 * grow)
    if morph == "kidney" and effect not in ("damaged", "apoptotic"):
        bite = rng.uniform(0.3, 0.4)
        mask &= ~_disc(yy, xx, cy + r * 0.55 * dy, cx + r * 0.55 * dx, r * bite)
    return mask
