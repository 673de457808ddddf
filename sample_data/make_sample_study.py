"""Writes sample_data/ct-demo/: a small synthetic CT study for the demo and for a first try.

    .venv/bin/python sample_data/make_sample_study.py

Eight 64x64 slices of a made-up patient, about 70 KB in all, so the repository stays small.
"""

from __future__ import annotations

from pathlib import Path

from dicom_chain.synthetic import StudySpec, ct_study

OUT = Path(__file__).parent / "ct-demo"
SPEC = StudySpec(seed=2026, instances=8, rows=64, columns=64, series=2)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for ds in ct_study(SPEC):
        ds.save_as(OUT / f"IMG{int(ds.InstanceNumber):04d}.dcm", enforce_file_format=True)


if __name__ == "__main__":
    main()
