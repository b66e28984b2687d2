import numpy as np
import pytest
from PIL import Image

from ulffn_deploy.errors import UlffnError
from ulffn_deploy.imageio import read_mask, read_rgb, write_mask


def test_grayscale_rgba_and_16bit_become_rgb_uint8(tmp_path):
    Image.fromarray(np.full((4, 5), 100, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((4, 5, 4), 200, np.uint8), mode="RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 5), 65535, np.uint16)).save(tmp_path / "d.png")
    for name, value in (("g.png", 100), ("a.png", 156), ("d.png", 255)):
        image = read_rgb(tmp_path / name)
        assert image.shape == (4, 5, 3) and image.dtype == np.uint8
        assert abs(int(image[0, 0, 0]) - value) <= 1, name


def test_exif_rotation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert read_rgb(tmp_path / "r.jpg").shape == (20, 10, 3)


def test_unreadable_files_raise_project_error(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(UlffnError, match="not a readable image"):
        read_rgb(tmp_path / "x.jpg")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "t.jpg")
    (tmp_path / "t.jpg").write_bytes((tmp_path / "t.jpg").read_bytes()[:100])
    with pytest.raises(UlffnError):
        read_rgb(tmp_path / "t.jpg")
    with pytest.raises(UlffnError, match="no such file"):
        read_rgb(tmp_path / "missing.png")


def test_masks_round_trip_and_accept_zero_one(tmp_path):
    mask = np.eye(6, dtype=bool)
    write_mask(tmp_path / "m.png", mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    assert set(np.unique(np.asarray(Image.open(tmp_path / "m.png")))) == {0, 255}
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "01.png")
    assert np.array_equal(read_mask(tmp_path / "01.png"), mask)
    assert not list(tmp_path.glob(".*tmp"))


def test_decoding_in_threads_loses_no_warning_of_another_thread(tmp_path):
    """evaluate and predict decode in a thread pool while other code warns (a skipped sample): decoding must
    not swap the process-wide warning filters (warnings.catch_warnings did, and such warnings were lost)."""
    import threading
    import warnings

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 48), (90, 60, 40)).save(tmp_path / "r.jpg", exif=exif)
    done = threading.Event()

    def decode() -> None:
        while not done.is_set():
            assert read_rgb(tmp_path / "r.jpg").shape == (64, 48, 3)

    workers = [threading.Thread(target=decode) for _ in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for worker in workers:
            worker.start()
        for index in range(300):
            warnings.warn(f"sample {index}", UserWarning, stacklevel=1)
        done.set()
        for worker in workers:
            worker.join()
    assert len([w for w in caught if str(w.message).startswith("sample ")]) == 300
