"""Nothing silently wrong (issue 18): garbled WFDB signals are skipped by their header checksums,
processed sets and generated samples carry a manifest that loading checks."""

import shutil

import numpy as np
import pytest
import wfdb

from diffusets_jax.data_pipelines.records import RecordError, read_wfdb
from diffusets_jax.checkpoints import MANIFEST_FILE, verify_manifest
from diffusets_jax.errors import IntegrityError

RECORD = "records500/00000/00001_hr"


def _garble(dat, start=40_000, length=4_800, seed=0):
    """Overwrite `length` bytes of `dat` in place (same size), as a bad copy or sector would."""
    data = bytearray(dat.read_bytes())
    data[start : start + length] = np.random.default_rng(seed).integers(0, 256, length, np.uint8).tobytes()
    dat.write_bytes(bytes(data))


@pytest.fixture
def ptbxl_copy(ptbxl_root, tmp_path):
    return shutil.copytree(ptbxl_root, tmp_path / "ptb-xl")


def test_an_intact_record_reads_as_wfdb_reads_it(ptbxl_root):
    raw = read_wfdb(ptbxl_root / RECORD)
    reference = wfdb.rdrecord(str(ptbxl_root / RECORD))
    assert reference.checksum is not None  # PTB-XL headers carry per-signal checksums
    np.testing.assert_array_equal(raw.signal, reference.p_signal)


def test_a_garbled_dat_fails_its_header_checksums(ptbxl_copy):
    _garble(ptbxl_copy / (RECORD + ".dat"))
    assert wfdb.rdrecord(str(ptbxl_copy / RECORD)).p_signal.shape == (5000, 12)  # wfdb alone reads noise
    with pytest.raises(RecordError, match=r"the samples of .* do not match the header's checksums"):
        read_wfdb(ptbxl_copy / RECORD, "1")


def test_prepare_skips_the_garbled_record_and_goes_on(ptbxl_root, ptbxl_copy):
    from diffusets_jax.data_pipelines.prepare import load_records

    intact, _ = load_records("ptbxl", ptbxl_root, progress=False)
    _garble(ptbxl_copy / (RECORD + ".dat"))
    records, skipped = load_records("ptbxl", ptbxl_copy, progress=False)
    assert [r.record_id for r in records] == [r.record_id for r in intact if r.record_id != "1"]
    (reason,) = [reason for record_id, reason in skipped if record_id == "1"]
    assert "checksums" in reason and "00001_hr" in reason


class _FixedEmbedder:
    name, dim = "fixed4", 4

    def embed(self, texts):
        return np.ones((len(texts), 4), np.float32) / 2


def test_a_processed_set_has_a_manifest_that_loading_checks(ptbxl_root, tmp_path):
    from diffusets_jax.data_pipelines.prepare import load_records
    from diffusets_jax.data_pipelines.processed import load_processed, save_processed

    records, skipped = load_records("ptbxl", ptbxl_root, progress=False)
    out = save_processed(records, skipped, tmp_path / "set", _FixedEmbedder(), source="ptbxl", root=str(ptbxl_root))
    assert verify_manifest(out)
    assert len(load_processed(out)) == len(records)
    dataset = out / "dataset.npz"
    data = bytearray(dataset.read_bytes())
    data[-10_000:-5_200] = bytes(4_800)  # same size
    dataset.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{dataset}: SHA-256 differs"):
        load_processed(out)
    (out / MANIFEST_FILE).unlink()  # a set written before manifests loads unchecked
    (out / "info.json").write_text((out / "info.json").read_text())
    with pytest.raises(ValueError):  # but the zip's own CRC still catches this garbling
        load_processed(out)


def test_generated_samples_carry_a_manifest(ptbxl_root, tmp_path):
    from diffusets_jax.pipeline import GenerationResult, write_outputs

    signal = read_wfdb(ptbxl_root / RECORD).signal[None, :1024].astype(np.float32)  # a real ECG as "generated"
    result = GenerationResult(signal, "Sinus rhythm", 50.0, "M", 70.0, seed=0, num_steps=2, prompt="Sinus rhythm")
    write_outputs(result, tmp_path / "out", png=False)
    assert verify_manifest(tmp_path / "out")
    (tmp_path / "out" / "ecg_000.dat").write_bytes(b"")
    with pytest.raises(IntegrityError, match="ecg_000.dat has 0 bytes"):
        verify_manifest(tmp_path / "out")
