"""The PhysioNet/CinC Challenge 2020/2021 reader (diffusets_jax.data_pipelines.cinc) on real records in tests/data/cinc.

Fixture (unmodified files, see tests/data/ATTRIBUTION.md): PTB `S0001` (1000 Hz, 38.4 s, 3
windows), CPSC `A0005` (25 s, 2 windows), Georgia `E00004` (10 s, 4 codes) and `E00001`
(`#Age: NaN`, skipped), Ningbo `JS20006` (10 s, a code in neither mapping file) and PTB-XL
`HR06002` (in `ptb-xl/`, left out by default). Expected values are written out here from the
headers and the mapping CSVs; signals are checked against scipy run here on the raw wfdb signal.
"""

import csv
import shutil

import numpy as np
import pytest
import scipy.signal
import tensorflow_datasets as tfds
import wfdb

from diffusets_jax.data_pipelines import cinc, get_reader
from diffusets_jax.data_pipelines.prepare import load_records
from diffusets_jax.data_pipelines.processed import load_processed
from diffusets_jax.data_pipelines.records import RecordError, detect_heart_rate, patient_fold
from diffusets_jax import cli

WINDOW_IDS = [
    "cpsc_2018/A0005_w0",
    "cpsc_2018/A0005_w1",
    "georgia/E00001",
    "georgia/E00004",
    "ningbo/JS20006",
    "ptb/S0001_w0",
    "ptb/S0001_w1",
    "ptb/S0001_w2",
]
LOADED_IDS = [i for i in WINDOW_IDS if i != "georgia/E00001"]
NAN_AGE_SKIP = ("georgia/E00001", "age is missing or not a number ('NaN')")


@pytest.fixture(scope="module")
def loaded(cinc_root):
    records, skipped = load_records("cinc", cinc_root, progress=False)
    return {r.record_id: r for r in records}, skipped


def copy_records(src_root, dst_root, *records):
    """Copy the mapping CSVs and `records` (`folder/NAME`, .hea + .mat) into `dst_root`, writable."""
    dst_root.mkdir(parents=True, exist_ok=True)
    for name in cinc.MAPPING_FILES:
        shutil.copyfile(src_root / name, dst_root / name)
    for record in records:
        (dst_root / record).parent.mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".mat"):
            shutil.copyfile((src_root / record).with_suffix(ext), (dst_root / record).with_suffix(ext))
    return dst_root


# ------------------------------------------------------------------------------- listing and windows


def test_list_records_lists_windows_and_leaves_out_ptbxl(cinc_root):
    assert get_reader("cinc") is cinc
    assert cinc.list_records(cinc_root) == WINDOW_IDS
    everything = cinc.list_records(cinc_root, exclude=())
    assert everything == sorted(WINDOW_IDS + ["ptb-xl/HR06002"])
    # the excluded folder's record still loads when asked for explicitly
    assert cinc.load_record(cinc_root, "ptb-xl/HR06002").statements == [
        "sinus bradycardia",
        "sinus rhythm",
        "incomplete right bundle branch block",
    ]


def test_list_records_follows_records_file(cinc_root, tmp_path):
    root = copy_records(cinc_root, tmp_path, "ptb/S0001", "georgia/E00004", "ptb-xl/HR06002")
    (root / "RECORDS").write_text("georgia/E00004\nptb/S0001\nptb-xl/HR06002\n")
    assert cinc.list_records(root) == ["georgia/E00004", "ptb/S0001_w0", "ptb/S0001_w1", "ptb/S0001_w2"]
    assert cinc.list_records(root, exclude=())[-1] == "ptb-xl/HR06002"


@pytest.mark.parametrize(
    "record, fs, seconds, windows", [("ptb/S0001", 1000, 38.4, 3), ("cpsc_2018/A0005", 500, 25, 2)]
)
def test_window_count_is_floor_of_duration(cinc_root, record, fs, seconds, windows):
    header = wfdb.rdheader(str(cinc_root / record))
    assert (header.fs, header.sig_len / header.fs) == (fs, seconds)
    assert windows == int(header.sig_len / header.fs // 10)
    assert [i for i in cinc.list_records(cinc_root) if i.startswith(record)] == [
        f"{record}_w{k}" for k in range(windows)
    ]


@pytest.mark.parametrize("record, windows", [("ptb/S0001", 3), ("cpsc_2018/A0005", 2)])
def test_window_signal_is_resampled_slice_of_raw_record(cinc_root, loaded, record, windows):
    raw = wfdb.rdrecord(str(cinc_root / record))
    assert raw.sig_name == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    n = 10 * raw.fs
    for k in range(windows):
        rec = loaded[0][f"{record}_w{k}"]
        expected = scipy.signal.resample(raw.p_signal[k * n : (k + 1) * n], 1024, axis=0)
        np.testing.assert_allclose(rec.signal, expected, rtol=0, atol=1e-5)
        assert rec.metadata["window"] == k and rec.metadata["start_s"] == 10 * k
        assert rec.metadata["fs"] == raw.fs and rec.metadata["record"] == record
        # heart rate is detected on this window alone (native rate)
        assert rec.heart_rate == pytest.approx(detect_heart_rate(raw.p_signal[k * n : (k + 1) * n], raw.fs))
    assert not np.allclose(loaded[0][f"{record}_w0"].signal, loaded[0][f"{record}_w1"].signal)


def test_ten_second_record_keeps_plain_id_and_whole_signal(cinc_root, loaded):
    raw = wfdb.rdrecord(str(cinc_root / "georgia/E00004"))
    rec = loaded[0]["georgia/E00004"]
    assert raw.sig_len == 5000 and rec.metadata["window"] is None
    np.testing.assert_allclose(rec.signal, scipy.signal.resample(raw.p_signal, 1024, axis=0), rtol=0, atol=1e-5)


def test_all_windows_of_a_record_share_one_fold(loaded):
    records = loaded[0]
    assert {records[f"cpsc_2018/A0005_w{k}"].fold for k in range(2)} == {patient_fold("A0005")}
    assert {records[f"cpsc_2018/A0005_w{k}"].patient_id for k in range(2)} == {"A0005"}
    # PTB S0001 is PTB patient001's first record (age 81, female, like S0002 and S0003)
    assert {records[f"ptb/S0001_w{k}"].patient_id for k in range(3)} == {"patient001"}
    assert {records[f"ptb/S0001_w{k}"].fold for k in range(3)} == {patient_fold("patient001")}
    assert records["georgia/E00004"].fold == patient_fold("E00004")


# ------------------------------------------------------------------------------- header fields


def test_statements_are_english_names_of_dx_codes(loaded):
    rec = loaded[0]["georgia/E00004"]
    # #Dx: 426177001,425623009,164934002,164873001 looked up by hand in dx_mapping_*.csv:
    # SB (scored), LIs (unscored), TAb (scored), LVH (unscored)
    assert rec.statements == [
        "sinus bradycardia",
        "lateral ischaemia",
        "t wave abnormal",
        "left ventricular hypertrophy",
    ]
    assert rec.metadata["dx_codes"] == ["426177001", "425623009", "164934002", "164873001"]
    assert rec.metadata["dx_abbreviations"] == ["SB", "LIs", "TAb", "LVH"]
    assert rec.report == "sinus bradycardia|lateral ischaemia|t wave abnormal|left ventricular hypertrophy"
    assert loaded[0]["ptb/S0001_w1"].statements == ["low qrs voltages", "sinus rhythm"]
    assert loaded[0]["cpsc_2018/A0005_w0"].statements == ["ventricular ectopics"]


def test_statements_match_mapping_csvs(cinc_root, loaded):
    names = {}
    for file in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        with open(cinc_root / file, newline="") as f:
            names.update({row["SNOMEDCTCode"]: row["Dx"] for row in csv.DictReader(f)})
    for rec in loaded[0].values():
        assert rec.statements == [names.get(c, f"unknown diagnosis (SNOMED CT {c})") for c in rec.metadata["dx_codes"]]


def test_unknown_code_becomes_a_statement_naming_it(loaded):
    rec = loaded[0]["ningbo/JS20006"]
    assert rec.statements == [
        "premature atrial contraction",
        "sinus tachycardia",
        "left ventricular high voltage",
        "unknown diagnosis (SNOMED CT 251238007)",
        "premature ventricular contractions",
    ]
    assert rec.metadata["unknown_dx_codes"] == ["251238007"]
    assert rec.metadata["dx_abbreviations"][3] == ""


@pytest.mark.parametrize(
    "record_id, age, sex",
    [
        ("georgia/E00004", 75, "M"),
        ("ningbo/JS20006", 61, "M"),
        ("cpsc_2018/A0005_w1", 53, "M"),
        ("ptb/S0001_w2", 81, "F"),
    ],
)
def test_age_and_sex(loaded, record_id, age, sex):
    rec = loaded[0][record_id]
    assert (rec.age, rec.sex, rec.source) == (age, sex, "cinc")


def test_heart_rate_matches_rhythm_statements(loaded):
    records = loaded[0]
    assert records["georgia/E00004"].heart_rate < 60  # sinus bradycardia
    assert records["ningbo/JS20006"].heart_rate > 100  # sinus tachycardia
    ptb = [records[f"ptb/S0001_w{k}"].heart_rate for k in range(3)]  # sinus rhythm, one steady recording
    assert all(60 <= hr <= 100 for hr in ptb) and max(ptb) - min(ptb) < 5


def test_parse_comments_both_header_styles():
    challenge = ["Age: 85", "Sex: Male", "Dx: 164889003,59118001", "Rx: Unknown"]
    rewritten = [" Age: 78", " Sex: Female", " Dx: 67741000119109,426177001"]  # '# Age:' written by wfdb
    assert cinc.parse_comments(challenge) == {"age": "85", "sex": "Male", "dx": "164889003,59118001", "rx": "Unknown"}
    assert cinc.parse_comments(rewritten) == {"age": "78", "sex": "Female", "dx": "67741000119109,426177001"}
    assert cinc.statements_from_dx("426177001, 426177001,1", {"426177001": ("sinus bradycardia", "SB")}) == (
        ["sinus bradycardia", "unknown diagnosis (SNOMED CT 1)"],
        ["426177001", "1"],
        ["1"],
    )


# ------------------------------------------------------------------------------- skipped records


def test_nan_age_is_skipped_with_reason(loaded):
    assert loaded[1] == [NAN_AGE_SKIP]
    assert sorted(loaded[0]) == sorted(LOADED_IDS)


def edit_header(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_corrupted_copies_are_skipped_with_reasons(cinc_root, tmp_path):
    root = copy_records(cinc_root, tmp_path, "cpsc_2018/A0005", "georgia/E00004", "ningbo/JS20006")
    mat = root / "cpsc_2018/A0005.mat"
    mat.write_bytes(mat.read_bytes()[:100_000])  # truncated signal file
    edit_header(root / "georgia/E00004.hea", "#Age: 75\n", "")  # no #Age line
    edit_header(root / "ningbo/JS20006.hea", "#Sex: Male", "#Sex: Unknown")
    records, skipped = load_records("cinc", root, progress=False)
    assert records == []
    reasons = dict(skipped)
    assert list(reasons) == ["cpsc_2018/A0005_w0", "cpsc_2018/A0005_w1", "georgia/E00004", "ningbo/JS20006"]
    for window in ("cpsc_2018/A0005_w0", "cpsc_2018/A0005_w1"):
        assert reasons[window].startswith(f"cannot read WFDB record {root / 'cpsc_2018/A0005'}: ValueError")
    assert reasons["georgia/E00004"] == "age is missing or not a number (None)"
    assert reasons["ningbo/JS20006"] == "sex 'Unknown' is missing or unknown (expected M/F)"
    with pytest.raises(RecordError, match=r"^record georgia/E00004: age is missing"):
        cinc.load_record(root, "georgia/E00004")


def test_bad_window_is_skipped_alone(cinc_root, tmp_path):
    root = copy_records(cinc_root, tmp_path, "cpsc_2018/A0005")
    mat = root / "cpsc_2018/A0005.mat"
    raw = mat.read_bytes()
    samples = np.frombuffer(raw, dtype="<i2", offset=24).reshape(-1, 12).copy()  # 16+24: 12 leads interleaved
    samples[5000:10000, 8] = 0  # lead V3 disconnected during the second 10 s
    mat.write_bytes(raw[:24] + samples.tobytes())
    # a recording with a disconnected lead, not a corrupt file: the header's checksums (the 7th field
    # of each signal line, the 16-bit sum of its samples) describe the new samples
    header = root / "cpsc_2018/A0005.hea"
    lines = header.read_text().splitlines()
    for lead in range(12):
        fields = lines[1 + lead].split(" ")
        checksum = int(samples[:, lead].astype(np.int64).sum()) % 65536
        fields[6] = str(checksum - 65536 if checksum > 32767 else checksum)
        lines[1 + lead] = " ".join(fields)
    header.write_text("\n".join(lines) + "\n")
    records, skipped = load_records("cinc", root, progress=False)
    assert [r.record_id for r in records] == ["cpsc_2018/A0005_w0"]
    assert skipped == [("cpsc_2018/A0005_w1", "flat lead V3 (peak-to-peak < 0.01 mV)")]


@pytest.mark.parametrize(
    "record_id, message",
    [
        ("cpsc_2018/A0005", r"record is 25.0 s long: load its 10 s windows cpsc_2018/A0005_w0 .. cpsc_2018/A0005_w1"),
        ("cpsc_2018/A0005_w2", r"has 2 complete 10 s window\(s\); window 2 does not exist"),
        ("georgia/E00004_w0", r"is 10.0 s long, not split into windows: use its plain id"),
        ("georgia/E07510", r"duplicate of record E07509"),
        ("georgia/E99999", r"cannot read WFDB record"),
    ],
)
def test_bad_ids_are_rejected(cinc_root, record_id, message):
    with pytest.raises(RecordError, match=message):
        cinc.load_record(cinc_root, record_id)


def test_missing_mapping_files_are_reported(cinc_root, tmp_path):
    (tmp_path / "ptb").mkdir()
    with pytest.raises(RecordError, match="no Dx mapping file"):
        cinc.list_records(tmp_path)


# ------------------------------------------------------------------------------- prepare and TFDS


def test_prepare_cli_writes_the_windows(cinc_root, tmp_path, capsys):
    out = tmp_path / "cinc"
    assert cli.main(["prepare", "--dataset", "cinc", "--root", str(cinc_root), "--out", str(out)]) == 0
    assert f"loaded {len(LOADED_IDS)} records, skipped 1" in capsys.readouterr().out
    data = load_processed(out)
    assert list(data.record_ids) == LOADED_IDS
    assert data.signals.shape == (len(LOADED_IDS), 1024, 12)
    assert list(data.patient_ids[:2]) == ["A0005", "A0005"] and len(set(data.fold[-3:])) == 1
    with open(out / "skipped.csv", newline="") as f:
        assert [tuple(row) for row in csv.reader(f)][1:] == [NAN_AGE_SKIP]


def test_tfds_builder_builds(cinc_root, tmp_path, loaded):
    from diffusets_jax.data_pipelines.tfds import build_dataset

    info = build_dataset("cinc", cinc_root, tmp_path)
    builder = tfds.builder_from_directory(info.data_dir)
    examples = {}
    for split in builder.info.splits:
        for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
            examples[example["record_id"].decode()] = (split, example)
    assert sorted(examples) == sorted(LOADED_IDS)
    assert info.metadata["skipped"] == [list(NAN_AGE_SKIP)]
    for record_id, (split, example) in examples.items():
        record = loaded[0][record_id]
        np.testing.assert_array_equal(example["signal"], record.signal)
        assert example["fold"] == record.fold and [s.decode() for s in example["statements"]] == record.statements
    splits = {split for record_id, (split, _) in examples.items() if record_id.startswith("ptb/S0001")}
    assert len(splits) == 1
