"""Dataset readers producing `diffusets_jax.data_pipelines.records.ECGRecord` objects.

Each reader module (`ptbxl`, `ludb`, `mimic`, `cinc`) exposes `NAME`, `list_records(root)`
and `load_record(root, record_id, ...)`; `diffusets_jax.data_pipelines.prepare.load_records()` runs one over a
dataset and collects the records that fail with `diffusets_jax.data_pipelines.records.RecordError`.
"""

from types import ModuleType

from . import cinc, ludb, mimic, ptbxl
from .records import ECGRecord, RecordError

READERS: dict[str, ModuleType] = {ptbxl.NAME: ptbxl, ludb.NAME: ludb, mimic.NAME: mimic, cinc.NAME: cinc}


def get_reader(name: str) -> ModuleType:
    """Reader module for `name` (`'ptbxl'`, `'ludb'`, `'mimic'`, `'cinc'`); ValueError listing valid names."""
    try:
        return READERS[name]
    except KeyError:
        raise ValueError(f"unknown data source {name!r}; valid sources: {', '.join(sorted(READERS))}") from None


__all__ = ["READERS", "get_reader", "ECGRecord", "RecordError", "cinc", "ludb", "mimic", "ptbxl"]
