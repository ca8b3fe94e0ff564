"""TFDS builder of MIMIC-IV-ECG 1.0 (PhysioNet, credentialed access), the DiffuSETS training set."""

from __future__ import annotations

from diffusets_jax.data_pipelines import mimic

from .base import ECGBuilder, embedder_configs


class Mimic(ECGBuilder):
    """MIMIC-IV-ECG studies processed by `diffusets_jax.data_pipelines.mimic.load_record()`.

    One config per text embedder (default `'minilm'`). Splits by
    `patient_fold(subject_id)`: train = folds 1-8, validation = 9, test = 10. The whole set
    (about 800k studies) is built streaming, locally or with Apache Beam (see `.base` and
    docs/training-at-scale.md); `record_ids` builds a subset.
    """

    SOURCE = mimic.NAME
    BUILDER_CONFIGS = embedder_configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download MIMIC-IV-ECG 1.0 from https://physionet.org/content/mimic-iv-ecg/1.0/ (credentialed)
    and pass its directory (holding record_list.csv, machine_measurements.csv and files/) as
    manual_dir. Put MIMIC-IV hosp/patients.csv there too for age and sex.
    """
