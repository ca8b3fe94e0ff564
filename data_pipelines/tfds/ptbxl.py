"""TFDS builder of PTB-XL 1.0.3 (PhysioNet, CC BY 4.0); splits by `strat_fold`."""

from __future__ import annotations

from diffusets_jax.data_pipelines import ptbxl

from .base import ECGBuilder, embedder_configs


class Ptbxl(ECGBuilder):
    """PTB-XL records processed by `diffusets_jax.data_pipelines.ptbxl.load_record()`.

    Configs `'<embedder>-500hz'` (default `'minilm-500hz'`, the official rate) and
    `'<embedder>-100hz'` choose the text embedder and the WFDB files read (`records500` or
    `records100`). Splits: train = `strat_fold` 1-8, validation = 9, test = 10 (patient-wise,
    as recommended by the PTB-XL authors).
    """

    SOURCE = ptbxl.NAME
    BUILDER_CONFIGS = embedder_configs(rates=(500, 100))
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download PTB-XL 1.0.3 from https://physionet.org/content/ptb-xl/1.0.3/ and pass its directory
    (holding ptbxl_database.csv, scp_statements.csv, records500/ and records100/) as manual_dir.
    """
