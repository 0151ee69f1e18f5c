"""One image-reading guard (nasfcos.images.read_image) for predict and int8 calibration:
decompression bombs refused in one line, 16-bit / palette modes converted by their range,
EXIF orientation applied (issue 25)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nasfcos.errors import NasfcosError
from nasfcos.images import read_image


def test_16_bit_png_is_not_saturated(tmp_path: Path) -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    arr = np.asarray(read_image(tmp_path / "g16.png"))
    assert arr.shape == (64, 64, 3)
    assert (arr == 255).mean() < 0.01 and abs(float(arr.mean()) - 127.5) < 2  # a ramp, not white
    # the same image at 8 bits reads the same to within rounding
    Image.fromarray((ramp >> 8).astype(np.uint8)).save(tmp_path / "g8.png")
    assert np.abs(arr.astype(int) - np.asarray(read_image(tmp_path / "g8.png")).astype(int)).max() <= 1


def test_palette_with_transparency_reads_its_colours(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (0, 0, 4, 8))
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png")
    arr = np.asarray(read_image(tmp_path / "p.png"))
    assert tuple(arr[0, 0]) == (0, 0, 255) and tuple(arr[0, 7]) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    shown = read_image(tmp_path / "r.jpg")
    assert shown.size == (20, 40)
    assert np.asarray(shown)[:5].mean() > 200  # the strip is now at the top
    assert read_image(tmp_path / "r.jpg", orient=False).size == (40, 20)


@pytest.mark.parametrize("kind", ["png", "bmp", "garbage"])
def test_bombs_and_garbage_are_one_line_errors(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"x.{'png' if kind != 'bmp' else 'bmp'}"
    if kind == "png":  # 20000 x 20000 of zeros: a few tens of KB on disk
        Image.frombytes("1", (20000, 20000), bytes(20000 * 20000 // 8)).save(path)
    elif kind == "bmp":  # a header claiming 50000 x 50000
        header = bytearray(Image.new("RGB", (2, 2)).tobytes())
        Image.new("RGB", (2, 2)).save(path)
        data = bytearray(path.read_bytes())
        data[18:22] = (50000).to_bytes(4, "little")
        data[22:26] = (50000).to_bytes(4, "little")
        path.write_bytes(bytes(data) + bytes(header))
    else:
        path.write_bytes(b"not an image")
    with pytest.raises(NasfcosError) as info:
        read_image(path, what="calibration image")
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    if kind != "garbage":
        assert "megapixel" in msg or "too large" in msg
