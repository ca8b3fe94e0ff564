"""TFDS builder of the PhysioNet/CinC Challenge 2020/2021 data (PhysioNet, CC BY 4.0); one example per 10 s window."""

from __future__ import annotations

from diffusets_jax.data_pipelines import cinc

from .base import ECGBuilder, embedder_configs


class Cinc(ECGBuilder):
    """CinC Challenge 2020/2021 examples processed by `diffusets_jax.data_pipelines.cinc.load_record()`.

    One config per text embedder (default `'minilm'`). Every complete 10 s window of a longer
    record is its own example (`<record>_w<k>`); the `ptb-xl/` folder (PTB-XL's own records)
    is left out, as by `diffusets_jax.data_pipelines.cinc.list_records()`. Splits by
    `patient_fold(patient_id)` (patient = record; PTB: its patient), so all windows of a record
    are in one split: train = folds 1-8, validation = 9, test = 10.
    """

    SOURCE = cinc.NAME
    BUILDER_CONFIGS = embedder_configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the Challenge 2021 training data from https://physionet.org/content/challenge-2021/1.0.3/
    (training/: one folder per source database with NAME.hea + NAME.mat records) and put
    dx_mapping_scored.csv and dx_mapping_unscored.csv (from
    https://github.com/physionetchallenges/evaluation-2021) in that directory; pass it as manual_dir.
    """
