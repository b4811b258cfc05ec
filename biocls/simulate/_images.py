"""Seeded cartoon microscopy of single blood cells from several patients, with a clinical table.

What a classifier has to learn, and what can mislead it:

- **Cell type** sets the cell's size and outline, the nucleus shape (round, multi-lobed,
  kidney-shaped, bilobed) and the cytoplasm's colour and granules.
- **Cell state** is drawn independently of the type: the first state adds nothing; the second
  (``damaged``) adds membrane blebs and breaks the nucleus into fragments; the third
  (``malignant``) enlarges the nucleus, makes its outline irregular and darker.
- **Patients** differ in stain (colour of nucleus and cytoplasm), brightness, focus (blur) and in
  how common each state is (Dirichlet prevalence); some type×state pairs can be absent.
- **Clinical table**, constant within a patient: age, sex, a lab value (``crp``, rising with the
  patient's damaged share), symptoms (``fever;cough``) and ``sample_code``, nearly unique per
  patient and rising with its malignant share: a network can use it to recognise patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from biocls._errors import BioclsError

__all__ = ["simulate_images"]

#: built-in morphologies, given to the type names in order (cycled when there are more names)
_MORPHOLOGIES = ("round", "lobed", "kidney", "bilobed_granular", "small_dark", "large_pale")
#: cytoplasm colour (RGB, 0-1) per morphology
_CYTOPLASM = {"round": (0.75, 0.78, 0.92), "lobed": (0.93, 0.80, 0.84),
              "kidney": (0.72, 0.74, 0.84), "bilobed_granular": (0.96, 0.72, 0.60),
              "small_dark": (0.62, 0.55, 0.80), "large_pale": (0.90, 0.88, 0.92)}
#: cell radius as a share of the image side
_RADIUS = {"round": 0.26, "lobed": 0.34, "kidney": 0.40, "bilobed_granular": 0.34,
           "small_dark": 0.20, "large_pale": 0.42}
_STATE_EFFECTS = ("none", "damaged", "malignant")
_SYMPTOMS = ("fever", "cough", "fatigue", "weight_loss", "rash")
_SUPERSAMPLE = 4


def simulate_images(out: str | Path, *, n_patients: int = 12, images_per_patient: int = 60,
                    size: int = 32,
                    types: Sequence[str] = ("lymphocyte", "neutrophil", "monocyte",
                                            "eosinophil"),
                    states: Sequence[str] = ("healthy", "damaged", "malignant"),
                    absent_combinations: Sequence[tuple[str, str]] = (),
                    absent_in_patients: Sequence[str] | None = None,
                    stain_sd: float = 0.08, brightness_sd: float = 0.06, blur_max: float = 1.2,
                    noise_sd: float = 0.03, state_prevalence_concentration: float = 4.0,
                    clinical: bool = True, seed: int = 0) -> pd.DataFrame:
    """Write ``out/manifest.tsv`` and ``out/images/<patient>/<patient>_<k>.png``; return the
    manifest.

    Options: ``n_patients`` and ``images_per_patient``; ``size`` (pixels per side, RGB);
    ``types`` and ``states`` (any names: they take the built-in morphologies and state effects in
    order); ``absent_combinations``, [type, state] pairs never drawn in ``absent_in_patients``
    (default: every patient); ``stain_sd``, ``brightness_sd`` and ``blur_max`` (Gaussian blur
    sigma, drawn per patient up to this) for the patients' acquisition; ``noise_sd``, pixel
    noise; ``state_prevalence_concentration``, the Dirichlet concentration of each patient's
    state shares (smaller: patients differ more); ``clinical``, add the clinical columns;
    ``seed``. Each patient draws from its own stream of ``(seed, patient)``, so adding patients
    leaves the earlier ones unchanged. The folder is written whole or not at all.
    """
    from PIL import Image

    from biocls._io import atomic_path

    types, states = [str(t) for t in types], [str(s) for s in states]
    patients = [f"P{i + 1:02d}" for i in range(n_patients)]
    _check(n_patients, types, states, size, absent_combinations, absent_in_patients, patients)
    absent_in = set(patients if absent_in_patients is None else absent_in_patients)
    absent = {(str(t), str(s)) for t, s in absent_combinations}
    rows = []
    with atomic_path(out) as tmp:
        for i, patient in enumerate(patients):
            rng = np.random.default_rng([seed, i])
            look = _patient_look(rng, stain_sd, brightness_sd, blur_max)
            base = np.array([0.6] + [0.4 / max(len(states) - 1, 1)] * (len(states) - 1))
            prevalence = rng.dirichlet(state_prevalence_concentration * base * len(states))
            folder = tmp / "images" / patient
            folder.mkdir(parents=True)
            record = _clinical(rng, prevalence, states, i) if clinical else {}
            for k in range(images_per_patient):
                t = int(rng.integers(len(types)))
                p = prevalence.copy()
                if patient in absent_in:
                    for j, s in enumerate(states):
                        if (types[t], s) in absent:
                            p[j] = 0.0
                s = int(rng.choice(len(states), p=p / p.sum()))
                effect = _STATE_EFFECTS[s] if s < len(_STATE_EFFECTS) else "none"
                pixels = _draw(rng, size, _MORPHOLOGIES[t % len(_MORPHOLOGIES)], effect, look,
                               noise_sd)
                name = f"images/{patient}/{patient}_{k:04d}.png"
                Image.fromarray(pixels).save(tmp / name)
                rows.append({"image": name, "patient": patient, "cell_type": types[t],
                             "cell_state": states[s], **record})
        manifest = pd.DataFrame(rows)
        manifest.to_csv(tmp / "manifest.tsv", sep="\t", index=False)
    return manifest


def _check(n_patients: int, types: list[str], states: list[str], size: int,
           absent: Sequence[tuple[str, str]], absent_in: Sequence[str] | None,
           patients: list[str]) -> None:
    where = "simulate images"
    if n_patients < 2:
        raise BioclsError(f"n_patients is {n_patients}", where=where, fix="use at least 2")
    if len(set(types)) < 2:
        raise BioclsError("fewer than 2 cell types", where=where, fix="name at least 2 types")
    if not states:
        raise BioclsError("no cell states", where=where, fix="name at least 1 state")
    if size < 16:
        raise BioclsError(f"size is {size}", where=where, fix="use at least 16 pixels")
    for pair in absent:
        t, s = (str(v) for v in pair)
        if t not in types or s not in states:
            raise BioclsError(f"absent combination [{t}, {s}] names an unknown type or state",
                              where=f"{where}: absent_combinations",
                              fix=f"types are {types}, states {states}")
    unknown = sorted(set(absent_in or ()) - set(patients))
    if unknown:
        raise BioclsError(f"absent_in_patients names unknown patients {unknown}",
                          where=f"{where}: absent_in_patients",
                          fix=f"patients are {patients[0]}…{patients[-1]}")


def _patient_look(rng: np.random.Generator, stain_sd: float, brightness_sd: float,
                  blur_max: float) -> dict[str, float | np.ndarray]:
    """One patient's slide: stain factors per channel, brightness, focus."""
    return {"stain": np.clip(rng.normal(1.0, stain_sd, 3), 0.6, 1.4),
            "nucleus_stain": np.clip(rng.normal(1.0, stain_sd, 3), 0.6, 1.4),
            "brightness": float(rng.normal(0.0, brightness_sd)),
            "blur": float(rng.uniform(0.0, blur_max))}


def _clinical(rng: np.random.Generator, prevalence: np.ndarray, states: list[str],
              index: int) -> dict[str, object]:
    damaged = float(prevalence[1]) if len(states) > 1 else 0.0
    malignant = float(prevalence[2]) if len(states) > 2 else 0.0
    p_symptom = {"fever": 0.15 + 0.7 * damaged, "cough": 0.3, "fatigue": 0.3 + 0.5 * malignant,
                 "weight_loss": 0.1 + 0.6 * malignant, "rash": 0.1}
    symptoms = [s for s in _SYMPTOMS if rng.random() < min(p_symptom[s], 0.95)]
    return {"age": int(rng.integers(25, 86)), "sex": str(rng.choice(["F", "M"])),
            "crp": round(max(0.1, 5.0 + 80.0 * damaged + rng.normal(0.0, 5.0)), 1),
            "symptoms": ";".join(symptoms),
            # rises with the malignant share; the index's last digits keep it unique per patient
            "sample_code": round(10.0 * malignant + rng.normal(0.0, 0.05), 2) + index * 1e-3}


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _draw(rng: np.random.Generator, size: int, morph: str, effect: str,
          look: dict[str, float | np.ndarray], noise_sd: float) -> np.ndarray:
    """One cell as uint8 ``[size, size, 3]``, drawn supersampled and averaged down."""
    from scipy import ndimage

    n = size * _SUPERSAMPLE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    cy, cx = n / 2 + rng.normal(0, n * 0.04, 2)
    r = _RADIUS[morph] * n * rng.uniform(0.9, 1.1)
    angle = rng.uniform(0, 2 * np.pi)
    # the outline: a slightly squashed, rotated disc
    squash = rng.uniform(0.85, 1.0)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    cell = (u / r) ** 2 + (v / (r * squash)) ** 2 <= 1.0
    if effect == "damaged":  # membrane blebs
        for a in rng.uniform(0, 2 * np.pi, int(rng.integers(4, 8))):
            by, bx = cy + r * np.sin(a), cx + r * np.cos(a)
            cell |= _disc(yy, xx, by, bx, r * rng.uniform(0.15, 0.28))
    nucleus = _nucleus(rng, yy, xx, cy, cx, r, angle, morph, effect)
    nucleus &= cell | (effect == "damaged")
    img = np.empty((n, n, 3), dtype=np.float32)
    img[:] = (0.93, 0.86, 0.86)  # background: pale pink plasma
    img[cell] = _CYTOPLASM[morph]
    img[cell] *= look["stain"]
    if morph in ("lobed", "bilobed_granular", "small_dark"):  # granules
        coarse = morph == "bilobed_granular"
        k = int(rng.integers(25, 45)) if coarse else int(rng.integers(60, 100))
        colour = (0.85, 0.35, 0.20) if coarse else (0.55, 0.35, 0.55)
        gy, gx = rng.uniform(cy - r, cy + r, k), rng.uniform(cx - r, cx + r, k)
        for y, x in zip(gy, gx, strict=True):
            g = _disc(yy, xx, y, x, n * (0.018 if coarse else 0.010)) & cell
            img[g] = colour
    darkness = 0.55 if effect == "malignant" else 1.0
    img[nucleus] = np.array((0.36, 0.20, 0.50)) * darkness * look["nucleus_stain"]
    img = img.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean((1, 3))
    if look["blur"] > 0.05:
        img = ndimage.gaussian_filter(img, sigma=(look["blur"], look["blur"], 0))
    img = img + look["brightness"] + rng.normal(0.0, noise_sd, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _nucleus(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
             r: float, angle: float, morph: str, effect: str) -> np.ndarray:
    """The nucleus mask: its shape is the type's; malignant enlarges and roughens it, damaged
    breaks it into fragments."""
    grow = 1.4 if effect == "malignant" else 1.0
    dy, dx = np.cos(angle), np.sin(angle)
    if morph in ("round", "small_dark"):
        parts = [(cy, cx, r * 0.78 * grow)]
    elif morph == "large_pale":
        parts = [(cy, cx, r * 0.45 * grow)]
    elif morph == "lobed":
        parts = [(cy + r * 0.42 * np.sin(angle + a), cx + r * 0.42 * np.cos(angle + a),
                  r * 0.22 * grow) for a in np.linspace(-1.6, 1.6, int(rng.integers(3, 5)))]
    elif morph == "bilobed_granular":
        parts = [(cy + s * r * 0.35 * dy, cx + s * r * 0.35 * dx, r * 0.28 * grow)
                 for s in (-1, 1)]
    else:  # kidney: a disc with a bite taken out
        parts = [(cy, cx, r * 0.55 * grow)]
    if effect == "damaged":  # fragments scattered inside the cell
        frags = []
        for py, px, pr in parts:
            for _ in range(int(rng.integers(3, 6))):
                off = rng.normal(0, r * 0.25, 2)
                frags.append((py + off[0], px + off[1], pr * rng.uniform(0.2, 0.35)))
        parts = frags
    mask = np.zeros(yy.shape, dtype=bool)
    for py, px, pr in parts:
        if effect == "malignant":  # irregular outline: the radius wobbles with the angle
            theta = np.arctan2(yy - py, xx - px)
            wobble = 1 + 0.18 * np.sin(3 * theta + rng.uniform(0, 6)) \
                + 0.10 * np.sin(5 * theta + rng.uniform(0, 6))
            mask |= (yy - py) ** 2 + (xx - px) ** 2 <= (pr * wobble) ** 2
        else:
            mask |= _disc(yy, xx, py, px, pr)
    if morph == "kidney" and effect != "damaged":
        mask &= ~_disc(yy, xx, cy + r * 0.5 * dy, cx + r * 0.5 * dx, r * 0.35)
    return mask
