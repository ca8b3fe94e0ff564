"""TFDS builder of LUDB 1.0.1 (PhysioNet, ODC-By 1.0); one patient per record."""

from __future__ import annotations

from diffusets_jax.data_pipelines import ludb

from .base import ECGBuilder, embedder_configs


class Ludb(ECGBuilder):
    """LUDB records processed by `diffusets_jax.data_pipelines.ludb.load_record()`.

    One config per text embedder (default `'minilm'`). Splits by
    `patient_fold(record_id)`: train = folds 1-8, validation = 9, test = 10. LUDB stores every
    lead rescaled to 1 mV peak-to-peak, so amplitudes are not physical (see the reader).
    """

    SOURCE = ludb.NAME
    BUILDER_CONFIGS = embedder_configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download LUDB 1.0.1 from https://physionet.org/content/ludb/1.0.1/ and pass its directory
    (holding RECORDS, ludb.csv and data/) as manual_dir.
    """
