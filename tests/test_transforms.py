"""X-ray preprocessing: readers (PNG 8/16-bit, JPEG, DICOM), margins, resize, sanity warnings."""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from medvill.data.transforms import (
    MissingDecoderError,
    Preprocess,
    crop_margins,
    decode_image,
    intensity_warnings,
    load_image,
    read_image,
    resize_pad_array,
    to_tensor,
)

LOGGER = "medvill.data.transforms"


def content(h: int, w: int, seed: int = 0, lo: float = 0.1, hi: float = 0.9) -> np.ndarray:
    """Busy 'anatomy': random values in [lo, hi] (no uniform rows or columns)."""
    return np.random.default_rng(seed).uniform(lo, hi, (h, w)).astype(np.float32)


def save_png16(path, arr: np.ndarray, sbit: int | None = None):
    Image.fromarray(np.rint(arr).astype(np.uint16)).save(path)
    if sbit is not None:  # insert an sBIT chunk right after IHDR (Pillow does not write one)
        data = path.read_bytes()
        end_ihdr = 8 + 8 + 13 + 4
        chunk = struct.pack(">I4sB", 1, b"sBIT", sbit) + struct.pack(">I", zlib.crc32(b"sBIT" + bytes([sbit])))
        path.write_bytes(data[:end_ihdr] + chunk + data[end_ihdr:])
    return path


def save_dicom(path, stored: np.ndarray, *, photometric="MONOCHROME2", bits_stored=12, transfer_syntax=None, **tags):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if meta.TransferSyntaxUID.is_compressed:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really compressed"])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --- readers ----------------------------------------------------------------------------------

def test_png_8_and_16_bit(tmp_path):
    arr8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(arr8, mode="L").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), arr8 / np.float32(255))

    full = np.linspace(0, 65535, 64 * 32).reshape(64, 32)
    x = read_image(save_png16(tmp_path / "full.png", full))
    assert x.dtype == np.float32 and x.min() == 0 and x.max() == 1
    assert np.allclose(x, full.round() / 65535, atol=1e-6)  # full 16-bit precision, no 8-bit step

    twelve = np.linspace(0, 4095, 64 * 32).reshape(64, 32)
    d = decode_image(save_png16(tmp_path / "twelve.png", twelve))
    assert d.bits == 12 and d.pixels.max() == 1 and np.allclose(d.pixels, twelve.round() / 4095, atol=1e-6)

    # sBIT = 12 honoured even when the data do not reach the top; data above it fall back to inference
    d = decode_image(save_png16(tmp_path / "sbit.png", np.linspace(0, 3000, 64).reshape(8, 8), sbit=12))
    assert d.bits == 12 and d.pixels.max() == pytest.approx(3000 / 4095)
    d = decode_image(save_png16(tmp_path / "liar.png", np.linspace(0, 9000, 64).reshape(8, 8), sbit=12))
    assert d.bits == 14 and "sBIT" in d.notes[0]


def test_jpeg_and_draft_decoding(tmp_path):
    grad = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (200, 1))
    Image.fromarray((grad * 255).round().astype(np.uint8), mode="L").save(tmp_path / "g.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "g.jpg") - grad).max() < 0.03
    big = np.tile(np.linspace(0, 1, 1200, dtype=np.float32), (800, 1))
    Image.fromarray((big * 255).round().astype(np.uint8), mode="L").convert("RGB").save(tmp_path / "b.jpg", quality=95)
    drafted = decode_image(tmp_path / "b.jpg", draft_size=128).pixels
    assert drafted.shape == (200, 300)  # reduced by 4, both sides still >= 128
    full = Preprocess(image_size=64, crop_margins=False)
    assert np.abs(full.run(tmp_path / "b.jpg")[0] - resize_pad_array(big, 64)).max() < 0.03


def test_dicom_rescale_window_inversion_and_bits(tmp_path):
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    noisy = stored.copy()
    noisy[0, 0] |= 0xF000  # junk above BitsStored = 12 must be masked away
    tags = dict(RescaleSlope=2, RescaleIntercept=-100, WindowCenter=2000, WindowWidth=1001)
    mono2 = read_image(save_dicom(tmp_path / "m2.dcm", noisy, **tags))
    value = stored * 2.0 - 100  # modality values
    expected = np.clip((value - 1999.5) / 1000 + 0.5, 0, 1)  # DICOM LINEAR window
    assert np.allclose(mono2, expected, atol=1e-6)

    mono1 = read_image(save_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", **tags))
    assert np.allclose(mono1, 1 - expected, atol=1e-6)

    no_window = read_image(tmp_path / "m2.dcm", window="none")
    assert np.allclose(no_window, (value - value.min()) / np.ptp(value), atol=1e-6)
    untagged = read_image(save_dicom(tmp_path / "plain.dcm", stored, RescaleSlope=2, RescaleIntercept=-100))
    assert np.allclose(untagged, no_window, atol=1e-6)  # no window tags -> min-max of modality values

    exact = read_image(save_dicom(tmp_path / "exact.dcm", stored, WindowCenter=2048, WindowWidth=2048,
                                  VOILUTFunction="LINEAR_EXACT"))
    assert np.allclose(exact, np.clip((stored.astype(float) - 2048) / 2048 + 0.5, 0, 1), atol=1e-6)


def test_dicom_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 8])  # LUTDescriptor: entries, first mapped, bits
    item.add_new(0x00283006, "US", [int(v) for v in 255 - np.arange(4096) // 16])  # LUTData
    x = read_image(save_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=Sequence([item]),
                              WindowCenter=100, WindowWidth=10))  # the LUT wins over the window
    assert np.allclose(x, (255 - stored // 16) / 255, atol=1e-6)


def test_compressed_dicom_without_plugin_names_file_and_plugin(tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS plugin is installed here")
    path = save_dicom(tmp_path / "jls.dcm", np.zeros((8, 8), np.uint16), transfer_syntax=JPEGLSLossless)
    with pytest.raises(MissingDecoderError, match=r"jls\.dcm.*JPEG-LS.*(pylibjpeg|gdcm)"):
        read_image(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.dcm"):
        read_image(tmp_path / "gone.dcm")
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    with pytest.raises(ValueError, match="bad.dcm"):
        read_image(tmp_path / "bad.dcm")
    (tmp_path / "trunc.png").write_bytes((save_png16(tmp_path / "t.png", np.ones((64, 64)) * 900)).read_bytes()[:60])
    with pytest.raises(ValueError, match="trunc.png"):
        Preprocess(image_size=16)(tmp_path / "trunc.png")


# --- margins ----------------------------------------------------------------------------------

@pytest.mark.parametrize("frame", [0.0, 1.0, "mixed"])
def test_crop_margins_cuts_uniform_frames(frame):
    inner = content(40, 30)
    img = np.zeros((60, 56), np.float32) if frame != 1.0 else np.ones((60, 56), np.float32)
    if frame == "mixed":  # black side bars, white collimation top and bottom
        img[:8], img[48:] = 1.0, 1.0
    img[8:48, 11:41] = inner
    out = crop_margins(img)
    assert out.shape == inner.shape and np.array_equal(out, inner)
    pil = Image.fromarray((img * 255).astype(np.uint8), mode="L")
    assert crop_margins(pil).size == (30, 40)


def test_crop_margins_no_op_limits_and_large_images():
    busy = content(50, 70)
    assert crop_margins(busy) is busy  # no margins: unchanged
    small = np.zeros((100, 100), np.float32)
    small[45:55, 45:55] = content(10, 10)
    assert crop_margins(small).shape == (50, 50)  # never more than max_crop (0.5) of each axis
    assert crop_margins(small, max_crop=0.2).shape == (80, 80)
    # large image: detection at block resolution (factor 4) keeps at most 3 px of border per side
    big = np.zeros((1000, 800), np.float32)
    big[101:901, 50:750] = content(800, 700)
    out = crop_margins(big)
    assert 800 <= out.shape[0] <= 806 and 700 <= out.shape[1] <= 706
    assert (out[3:-3, 3:-3] > 0).all()  # content itself is never cut


def test_preprocess_keeps_aspect_and_pads(tmp_path):
    wide = np.ones((100, 200), np.uint8) * 255
    Image.fromarray(wide, mode="L").save(tmp_path / "wide.png")
    out = np.asarray(Preprocess(image_size=64, crop_margins=False)(tmp_path / "wide.png"))
    assert out.shape == (64, 64)
    assert (out[16:48] == 255).all() and (out[:16] == 0).all() and (out[48:] == 0).all()
    # with margins: a black-framed portrait image becomes the content, resized and centred
    framed = np.zeros((120, 90), np.float32)
    framed[10:110, 20:70] = content(100, 50)
    Image.fromarray((framed * 255).round().astype(np.uint8), mode="L").save(tmp_path / "framed.png")
    out = np.asarray(Preprocess(image_size=64)(tmp_path / "framed.png"))
    cols = np.flatnonzero(out.max(axis=0) > 0)
    assert out.shape == (64, 64) and out[:, 32].min() > 0 and (cols[0], cols[-1]) == (16, 47)


def test_load_image_uses_the_same_path(tmp_path):
    Image.fromarray((content(80, 60) * 255).astype(np.uint8), mode="L").save(tmp_path / "x.png")
    x = load_image(tmp_path / "x.png", 32)
    assert x.shape == (3, 32, 32) and torch.equal(x, to_tensor(Preprocess(image_size=32)(tmp_path / "x.png")))


# --- intensity sanity check ---------------------------------------------------------------------

def test_warnings_near_constant_and_low_bits_once_per_file(tmp_path, caplog):
    flat = np.full((64, 64), 128, np.uint8)
    flat[::7, ::5] = 129
    Image.fromarray(flat, mode="L").save(tmp_path / "flat.png")
    low = np.random.default_rng(0).integers(0, 200, (64, 64))
    save_png16(tmp_path / "low16.png", low)
    good = content(64, 64, lo=0.0, hi=1.0)
    Image.fromarray((good * 255).astype(np.uint8), mode="L").save(tmp_path / "good.png")
    pre = Preprocess(image_size=32)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(2):
            for name in ("flat.png", "low16.png", "good.png"):
                pre(tmp_path / name)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2  # once per file, none for the good image
    assert "flat.png" in messages[0] and "nearly constant" in messages[0]
    assert "low16.png" in messages[1] and "low 8 bits" in messages[1]


def test_intensity_warning_rules():
    assert intensity_warnings(content(64, 64, lo=0.0, hi=1.0)) == []
    assert "low contrast" in intensity_warnings(content(64, 64, lo=0.0, hi=0.06))[0]
    clipped = np.zeros((64, 64), np.float32)
    clipped[:, 22:44] = content(64, 22)
    clipped[:, 44:] = 1.0
    assert "both ends" in intensity_warnings(clipped)[0]
    saturated = np.ones((64, 64), np.float32)
    saturated[:20] = content(20, 64)
    assert "saturated" in intensity_warnings(saturated)[0]
    ok16 = intensity_warnings(content(8, 8), kind="16-bit", raw_max=4095)
    assert ok16 == []


def test_decoding_lives_in_its_own_modules_and_is_re_exported():
    """Decoding is in medvill.data.decode / .dicom (which never import the preprocessing);
    every name of the former single module is still importable from medvill.data.transforms."""
    import ast
    import inspect

    from medvill.data import decode, dicom, transforms

    for module in (decode, dicom):
        imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(module)))
                    if isinstance(node, ast.ImportFrom)}
        assert "transforms" not in imported and "medvill.data.transforms" not in imported
    assert transforms.decode_image is decode.decode_image and transforms.Decoded is decode.Decoded
    assert transforms.MissingDecoderError is decode.MissingDecoderError
    assert transforms.intensity_warnings is decode.intensity_warnings and transforms.to_uint8 is decode.to_uint8
    assert len(transforms.__all__) == len(set(transforms.__all__))
    for name in transforms.__all__:
        assert hasattr(transforms, name), name
    public = {name for name, value in vars(decode).items() if not name.startswith("_")
              and getattr(value, "__module__", decode.__name__) == decode.__name__ and not inspect.ismodule(value)}
    assert public <= set(transforms.__all__)
