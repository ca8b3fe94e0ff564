"""Official PyTorch weight files <-> model directories (diffusets_jax.torch_weights).

The official weights are rebuilt from the parity recipe (tests/official_weights.py) and written as
real `.pth` files with `torch.save`, in the official layouts (`unet_all.pth` a plain state dict,
`vae_model.pth` = `{'encoder': sd, 'decoder': sd}`).
"""

import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusets_jax import Pipeline, cli, convert, torch_weights
from diffusets_jax.models import make_condition
from diffusets_jax.models.unet import timestep_table
from diffusets_jax.pretrained import load_pretrained
from official_weights import official_shapes, official_state_dicts, parity_arrays

torch = pytest.importorskip("torch")

TOLERANCE = 1e-4


def relative_error(out, ref) -> float:
    return float(np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref))


def save_pth(path, state_dict):
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, path)
    return path


def save_vae_pth(path, encoder, decoder):
    tensors = lambda sd: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}  # noqa: E731
    torch.save({"encoder": tensors(encoder), "decoder": tensors(decoder)}, path)
    return path


@pytest.fixture(scope="module")
def official():
    return official_state_dicts()


@pytest.fixture(scope="module")
def official_files(tmp_path_factory, official):
    d = tmp_path_factory.mktemp("official")
    return {
        "unet_pth": save_pth(d / "unet_all.pth", official["unet"]),
        "vae_pth": save_vae_pth(d / "vae_model.pth", official["vae_encoder"], official["vae_decoder"]),
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory, official_files):
    out = tmp_path_factory.mktemp("converted") / "model"
    return torch_weights.convert_official(official_files["unet_pth"], official_files["vae_pth"], out)


@pytest.fixture(scope="module")
def loaded(converted):
    return load_pretrained(converted)


def npz_arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return dict(data)


def test_converted_unet_reproduces_official_output(loaded):
    config, _, unet = loaded
    assert config.text.embed_dim == 1536
    ref = parity_arrays()
    z = jnp.asarray(ref["unet_in_z"]).transpose(0, 2, 1)  # official (B, 4, 128) -> (B, 128, 4)
    cond = make_condition(ref["unet_in_text"], ref["unet_in_sex"], ref["unet_in_age"], ref["unet_in_hr"])
    eps = nnx.jit(lambda m, x, t, c: m(x, t, c))(unet, z, jnp.asarray(ref["unet_in_t"]), cond)
    assert relative_error(np.asarray(eps).transpose(0, 2, 1), ref["unet_out_eps"]) < TOLERANCE


def test_converted_parameters_are_the_official_tensors(loaded, official, converted):
    _, vae, unet = loaded
    for module, part in ((unet, "unet"), (vae.encoder, "vae_encoder"), (vae.decoder, "vae_decoder")):
        for key, value in convert.state_dict(module).items():
            np.testing.assert_array_equal(value, official[part][key], err_msg=f"{part} {key}")
    card = (converted / "MODEL_CARD.md").read_text()
    assert "unet_all.pth" in card and "vae_model.pth" in card and "sha256" in card


def test_npz_input_gives_the_same_model(tmp_path, official, converted):
    unet_npz = tmp_path / "unet_all.npz"
    vae_npz = tmp_path / "vae_model.npz"
    np.savez(unet_npz, **official["unet"])
    np.savez(
        vae_npz,
        **{f"encoder.{k}": v for k, v in official["vae_encoder"].items()},
        **{f"decoder.{k}": v for k, v in official["vae_decoder"].items()},
    )
    encoder, decoder = torch_weights.read_vae_state_dicts(vae_npz)
    assert set(encoder) == set(official["vae_encoder"]) and set(decoder) == set(official["vae_decoder"])
    out = torch_weights.convert_official(unet_npz, vae_npz, tmp_path / "model")
    for name in ("unet.npz", "vae.npz"):
        a, b = npz_arrays(out / name), npz_arrays(converted / name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")


def test_read_state_dict_layouts(official_files, official):
    unet = torch_weights.read_state_dict(official_files["unet_pth"])
    assert list(unet) == list(official["unet"])
    assert all(v.dtype == np.float32 for v in unet.values())
    nested = torch_weights.read_state_dict(official_files["vae_pth"])
    assert set(nested) == {"encoder", "decoder"}
    encoder, decoder = torch_weights.read_vae_state_dicts(official_files["vae_pth"])
    np.testing.assert_array_equal(encoder["0.weight"], official["vae_encoder"]["0.weight"])
    np.testing.assert_array_equal(decoder["25.bias"], official["vae_decoder"]["25.bias"])


@pytest.mark.parametrize("fmt", ["pth", "npz"])
def test_export_round_trip(tmp_path, converted, official, fmt):
    unet_path, vae_path = torch_weights.export_official(converted, tmp_path / "export", format=fmt)
    assert unet_path.name == f"unet_all.{fmt}" and vae_path.name == f"vae_model.{fmt}"
    if fmt == "pth":
        raw_unet = torch.load(unet_path, map_location="cpu", weights_only=True)
        raw_vae = torch.load(vae_path, map_location="cpu", weights_only=True)
        assert set(raw_vae) == {"encoder", "decoder"}
        for sd in (raw_unet, raw_vae["encoder"], raw_vae["decoder"]):
            assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in sd.values())
    unet = torch_weights.read_state_dict(unet_path)
    encoder, decoder = torch_weights.read_vae_state_dicts(vae_path)
    shapes = official_shapes()
    for part, sd in (("unet", unet), ("vae_encoder", encoder), ("vae_decoder", decoder)):
        # Exactly the official keys, in the official order, with the official shapes.
        assert list(sd) == list(shapes[part]), part
        assert {k: v.shape for k, v in sd.items()} == shapes[part], part
        for key, value in sd.items():
            if ".block.down." in key:  # unused by the official forward: exported as zeros
                assert not value.any(), key
            elif key.endswith("time_emb.embeddings"):
                np.testing.assert_array_equal(value, timestep_table(), err_msg=key)
            else:
                np.testing.assert_array_equal(value, official[part][key], err_msg=f"{part} {key}")
    # And back: converting the exported files gives the same model directory.
    again = torch_weights.convert_official(unet_path, vae_path, tmp_path / "again")
    for name in ("unet.npz", "vae.npz"):
        a, b = npz_arrays(again / name), npz_arrays(converted / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name


def test_bad_keys_are_named(tmp_path, official, official_files):
    renamed = dict(official["unet"])
    renamed["output_conv.2.bias_renamed"] = renamed.pop("output_conv.2.bias")
    bad = save_pth(tmp_path / "renamed.pth", renamed)
    with pytest.raises(convert.ConversionError, match=r"renamed\.pth.*output_conv\.2\.bias"):
        torch_weights.convert_official(bad, official_files["vae_pth"], tmp_path / "out1")

    unknown = {**official["unet"], "extra.weight": np.zeros(3, np.float32)}
    bad = save_pth(tmp_path / "unknown.pth", unknown)
    with pytest.raises(convert.ConversionError, match="extra.weight"):
        torch_weights.convert_official(bad, official_files["vae_pth"], tmp_path / "out2")

    misshaped = {**official["vae_decoder"], "25.weight": np.zeros((12, 128, 5), np.float32)}
    bad = save_vae_pth(tmp_path / "vae_bad.pth", official["vae_encoder"], misshaped)
    with pytest.raises(convert.ConversionError, match=r"vae_bad\.pth.*vae decoder.*25\.weight"):
        torch_weights.convert_official(official_files["unet_pth"], bad, tmp_path / "out3")

    # The U-Net file given as the VAE (and the other way round) is refused, naming the file.
    with pytest.raises(convert.ConversionError, match="unet_all.pth"):
        torch_weights.read_vae_state_dicts(official_files["unet_pth"])
    with pytest.raises(convert.ConversionError, match="vae_model.pth"):
        torch_weights.convert_official(official_files["vae_pth"], official_files["vae_pth"], tmp_path / "out4")
    assert not (tmp_path / "out1").exists()


def test_corrupt_and_missing_files(tmp_path, official_files):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch checkpoint" * 10)
    with pytest.raises(torch_weights.WeightFileError, match="garbage.pth"):
        torch_weights.read_state_dict(garbage)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(official_files["unet_pth"].read_bytes()[: 1 << 20])
    with pytest.raises(torch_weights.WeightFileError, match="truncated.pth"):
        torch_weights.read_state_dict(truncated)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(torch_weights.WeightFileError, match="tensor.pth.*not a state dict"):
        torch_weights.read_state_dict(tensor_only)
    bad_npz = tmp_path / "bad.npz"
    bad_npz.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(torch_weights.WeightFileError, match="bad.npz"):
        torch_weights.read_state_dict(bad_npz)
    single = tmp_path / "single.npz"
    with single.open("wb") as f:
        np.save(f, np.zeros(3, np.float32))  # a .npy payload under an .npz name
    with pytest.raises(torch_weights.WeightFileError, match="single.npz"):
        torch_weights.read_state_dict(single)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        torch_weights.read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        torch_weights.convert_official(tmp_path / "missing.pth", official_files["vae_pth"], tmp_path / "out")


def test_export_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="format"):
        torch_weights.export_official(tmp_path, tmp_path / "out", format="safetensors")


def test_pth_without_torch_says_what_to_install(tmp_path, official_files, monkeypatch):
    np.savez(tmp_path / "w.npz", a=np.zeros(2, np.float32))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
        torch_weights.read_state_dict(official_files["unet_pth"])
    assert set(torch_weights.read_state_dict(tmp_path / "w.npz")) == {"a"}  # .npz needs NumPy only


class FixedEmbedder:
    """A stand-in for ada-002 (which needs an API key): the parity test's text embedding for any prompt."""

    name, dim = "parity-text", 1536

    def embed(self, prompts):
        return np.repeat(parity_arrays()["unet_in_text"][:1], len(prompts), axis=0)


def test_convert_and_export_commands(tmp_path, official_files, official):
    model_dir = tmp_path / "official_model"
    assert (
        cli.main(
            [
                "convert-torch",
                "--unet",
                str(official_files["unet_pth"]),
                "--vae",
                str(official_files["vae_pth"]),
                "--out",
                str(model_dir),
            ]
        )
        == 0
    )
    # The directory is what every command loads; the converted U-Net reproduces the official output.
    pipeline = Pipeline.from_pretrained(model_dir, embedder=FixedEmbedder())
    ref = parity_arrays()
    z = jnp.asarray(ref["unet_in_z"]).transpose(0, 2, 1)
    cond = make_condition(ref["unet_in_text"], ref["unet_in_sex"], ref["unet_in_age"], ref["unet_in_hr"])
    eps = nnx.jit(lambda m, x, t, c: m(x, t, c))(pipeline.unet, z, jnp.asarray(ref["unet_in_t"]), cond)
    assert relative_error(np.asarray(eps).transpose(0, 2, 1), ref["unet_out_eps"]) < TOLERANCE

    assert cli.main(["export-torch", "--checkpoint", str(model_dir), "--out", str(tmp_path / "back")]) == 0
    unet = torch_weights.read_state_dict(tmp_path / "back" / "unet_all.pth")
    encoder, _ = torch_weights.read_vae_state_dicts(tmp_path / "back" / "vae_model.pth")
    assert list(unet) == list(official_shapes()["unet"])
    np.testing.assert_array_equal(unet["output_conv.2.weight"], official["unet"]["output_conv.2.weight"])
    np.testing.assert_array_equal(encoder["0.weight"], official["vae_encoder"]["0.weight"])


def test_convert_command_names_the_bad_key(tmp_path, official, official_files, capsys):
    bad = save_pth(tmp_path / "bad_unet.pth", {k: v for k, v in official["unet"].items() if k != "output_conv.0.bias"})
    status = cli.main(
        ["convert-torch", "--unet", str(bad), "--vae", str(official_files["vae_pth"]), "--out", str(tmp_path / "out")]
    )
    assert status == 2
    error = capsys.readouterr().err
    assert "bad_unet.pth" in error and "output_conv.0.bias" in error
    assert (
        cli.main(
            ["convert-torch", "--unet", str(tmp_path / "nope.pth"), "--vae", str(bad), "--out", str(tmp_path / "out")]
        )
        == 2
    )
    assert "--unet" in capsys.readouterr().err


def _official_time_table(dtype_name: str) -> np.ndarray:
    """The frozen table as the official constructor builds it, in torch float32 or NumPy float64."""
    if dtype_name == "torch":
        import torch

        freqs = torch.exp(-torch.arange(32, dtype=torch.float32) * (10.0 / 31))
        angles = (torch.arange(1000, dtype=torch.float32)[:, None] + 1.0) * freqs[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).numpy()
    freqs = np.exp(-np.arange(32, dtype=np.float64) * (10.0 / 31))
    angles = (np.arange(1000, dtype=np.float64)[:, None] + 1.0) * freqs[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


@pytest.mark.parametrize("built_by", ["torch", "float64"])
def test_time_tables_of_other_platforms_are_accepted_and_wrong_ones_refused(
    tmp_path, official, official_files, built_by
):
    # issue 18, case 14: torch's float32 table differs from the port's by up to 1.5e-5, a rounded
    # float64 one by up to 5e-5; both are the official table.
    table = _official_time_table(built_by)
    assert np.abs(table - timestep_table()).max() > 1e-6
    tables = {k: table for k in official["unet"] if k.endswith("time_emb.embeddings")}
    assert len(tables) == 13
    good = save_pth(tmp_path / "good.pth", {**official["unet"], **tables})
    torch_weights.convert_official(good, official_files["vae_pth"], tmp_path / "out")
    shifted = np.roll(table, 1, axis=0)  # row t holds t instead of t + 1
    bad = save_pth(tmp_path / "bad.pth", {**official["unet"], **{k: shifted for k in tables}})
    with pytest.raises(convert.ConversionError, match="not the official frozen time table"):
        torch_weights.convert_official(bad, official_files["vae_pth"], tmp_path / "out_bad")
