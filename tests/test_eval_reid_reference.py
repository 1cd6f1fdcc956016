"""Raw-pixel re-ID references of a synthetic world: the person identifies, the camera's scene does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from clasp.evaluation.probes import identity_split, query_gallery_split
from clasp.evaluation.reid_reference import pixel_references
from clasp.datasets.truth import SynthTruth


def test_the_person_alone_identifies_and_the_background_alone_does_not(synth_world: Path) -> None:
    refs = pixel_references(synth_world)
    truth = SynthTruth.load(synth_world)
    _, test = identity_split(truth.identity)
    query, _ = query_gallery_split(truth.identity, truth.camera, test.nonzero()[0])
    assert {score["queries"] + score["skipped_queries"] for score in refs.values()} == {len(query)}
    person, background = refs["person only"], refs["background only"]
    assert person["mAP"] > 0.3 and person["rank1"] > 0.3, person
    assert background["mAP"] < 0.5 * person["mAP"] and background["rank1"] < person["rank1"], background
    assert refs["whole picture"]["mAP"] < person["mAP"]


def test_a_folder_without_ground_truth_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "clasp.evaluation.reid_reference", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {tmp_path}") and len(proc.stderr.splitlines()) == 1, proc.stderr
