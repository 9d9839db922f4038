"""clara.inputs: upload and text checks, the per-kind upload limits (one number each in the check,
the widget and the server option), and where a batch CSV's images may come from."""
from __future__ import annotations

import io
import os
import re
import zipfile

import pytest

from clara import inputs
from _app_utils import BAD_UPLOADS, ROOT, animated_gif_bytes, image_bytes


# ----------------------------------------------------------------------------- uploads

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_accepted_formats_are_recognised_by_content(fmt):
    data = image_bytes(fmt, size=(64, 48))
    assert inputs.sniff_image_format(data) == fmt
    checked = inputs.check_image_upload(data)
    assert (checked.format, checked.size, checked.image.mode, checked.frames) == (fmt, (64, 48), "RGB", 1)


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_are_refused_with_a_clear_message(case):
    _, make, expected = BAD_UPLOADS[case]
    with pytest.raises(inputs.InputError, match=re.escape(expected)):
        inputs.check_image_upload(make())


def test_the_name_never_decides_the_type():
    # a PNG named .jpg is fine; a BMP is refused even though PIL could read it
    assert inputs.check_image_upload(image_bytes("PNG")).format == "PNG"
    with pytest.raises(inputs.InputError, match="BMP image"):
        inputs.check_image_upload(image_bytes("BMP"))
    with pytest.raises(inputs.InputError, match="PDF document"):
        inputs.check_image_upload(b"%PDF-1.7\n...")


def test_oversized_file_is_refused_before_decoding():
    data = image_bytes("JPEG", size=(400, 400), quality=100)
    with pytest.raises(inputs.InputError, match=rf"The file is {len(data) / 1024:.0f} KB; images up to 2 KB"):
        inputs.check_image_upload(data, max_bytes=2048)
    with pytest.raises(inputs.InputError, match="too large"):
        inputs.check_image_upload(image_bytes("PNG", size=(100, 100)), max_pixels=5000)


def test_animated_gif_gives_its_first_frame():
    checked = inputs.check_image_upload(animated_gif_bytes([(255, 0, 0), (0, 255, 0), (0, 0, 255)]))
    assert checked.frames == 3
    assert checked.image.getpixel((5, 5)) == (255, 0, 0)
    assert checked.notes == ["Animated GIF with 3 frames: the first frame is used."]


def test_text_checks():
    assert inputs.check_text("  hello world \n") == "hello world"
    for empty in ("", "   \n\t", None, "\x00", "\u200b\u200d "):
        with pytest.raises(inputs.InputError, match="The text is empty"):
            inputs.check_text(empty)
        assert inputs.check_text(empty, allow_empty=True) == ""  # scripts/predict.py --text ""
    with pytest.raises(inputs.InputError, match="The text has 10,000 characters; at most 5,000"):
        inputs.check_text("a" * 10_000)
    assert len(inputs.check_text("a" * 5000)) == 5000
    with pytest.raises(inputs.InputError, match="not valid Unicode at position 3"):
        inputs.check_text("abc\udcff")  # what Python makes of the byte 0xff on a command line


def test_compose_text_keeps_post_and_image_text_apart():
    assert inputs.compose_text("my tweet", "TEXT IN IMAGE") == "my tweet TEXT IN IMAGE"
    assert inputs.compose_text("my tweet", "TEXT IN IMAGE", "post text only") == "my tweet"
    assert inputs.compose_text("my tweet", "TEXT IN IMAGE", "image text only") == "TEXT IN IMAGE"
    assert inputs.compose_text("", " ocr ") == "ocr"
    with pytest.raises(ValueError, match="unknown text source"):
        inputs.compose_text("a", "b", "both")


def test_display_name_is_never_a_path():
    assert inputs.safe_display_name("../../etc/passwd") == "passwd"
    assert inputs.safe_display_name("<img src=x onerror=alert(1)>.png") == "_img src_x onerror_alert_1_.png"
    assert inputs.safe_display_name("") == "upload"


def test_one_upload_limit_per_kind_in_the_check_and_the_server_option():
    assert set(inputs.UPLOAD_LIMITS_MB) == {"image", "csv", "zip"}
    for kind, megabytes in inputs.UPLOAD_LIMITS_MB.items():
        inputs.check_upload_size(kind, b"x" * (megabytes * 2**20))
        with pytest.raises(inputs.InputError, match=f"may be up to {megabytes} MB"):
            inputs.check_upload_size(kind, b"x" * (megabytes * 2**20 + 1))
    with pytest.raises(inputs.InputError, match="images up to 10.0 MB"):
        inputs.check_image_upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * (10 * 2**20))
    # The server refuses (HTTP 413) above server.maxUploadSize, whatever a widget says: it must be
    # the largest per-kind limit, so that each widget's own limit is the one that applies.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["maxUploadSize"] == max(inputs.UPLOAD_LIMITS_MB.values())
    assert config["server"]["address"] == "localhost"


# ----------------------------------------------------------------------------- a batch's images

def test_batch_images_stay_inside_their_folder_whatever_the_path_says(tmp_path):
    folder, outside = tmp_path / "images", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "ok.png").write_bytes(image_bytes("PNG"))
    (outside / "real.jpg").write_bytes(image_bytes("JPEG"))
    (folder / "link.jpg").symlink_to(outside / "real.jpg")  # a symlink leading out is outside
    images = inputs.BatchImages(folder=folder)
    assert inputs.check_image_upload(images.read("ok.png")).size == (64, 48)
    refs = ["../outside/real.jpg", "../outside/missing.jpg", str(outside / "real.jpg"), str(outside / "missing.jpg"),
            "link.jpg", "/etc/passwd", "/proc/self/mem", "/etc/shadow"]
    messages = []
    for ref in refs:
        with pytest.raises(inputs.InputError) as caught:
            images.read(ref)
        messages.append(str(caught.value).replace(repr(ref), "REF"))
    assert set(messages) == {f"REF points outside the images folder {folder.resolve()}."}  # existing or not


def test_batch_images_make_every_os_error_a_row_error(tmp_path):
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "pipe.png")  # would block a reader forever
    images = inputs.BatchImages(folder=tmp_path)
    for ref, expected in (("sub", "not a regular file"), ("pipe.png", "not a regular file"),
                          ("gone.png", "gone.png: file not found"), ("", "no image path")):
        with pytest.raises(inputs.InputError, match=re.escape(expected)):
            images.read(ref)
    # The script's user may name any file; /proc/self/mem claims to be a regular file and fails to read.
    with pytest.raises(inputs.InputError, match="cannot read the file"):
        inputs.BatchImages(folder=tmp_path, confine=False).read("/proc/self/mem")


def test_a_zip_member_is_read_in_memory_and_limits_hold(tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("imgs/a.png", image_bytes("PNG"))
    images = inputs.BatchImages(archive.getvalue())
    assert images.read("a.png") == images.read("imgs/a.png") == image_bytes("PNG")
    with pytest.raises(inputs.InputError, match=re.escape("'b.png' is not in the uploaded ZIP.")):
        images.read("b.png")
    with pytest.raises(inputs.InputError, match="not a valid ZIP"):
        inputs.BatchImages(b"PK\x03\x04 not really")


def test_the_images_folder_must_lie_inside_a_root_the_operator_allowed(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "posts").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "escape").symlink_to(elsewhere)
    assert inputs.allowed_folder(str(root / "posts"), [root]) == (root / "posts").resolve()
    assert inputs.allowed_folder("posts", [root]) == (root / "posts").resolve()  # relative to a root
    outside = {}
    for typed in (str(elsewhere), str(tmp_path / "nowhere"), "../elsewhere", "escape", "/"):
        with pytest.raises(inputs.InputError) as caught:
            inputs.allowed_folder(typed, [root])
        outside[typed] = str(caught.value)
    assert set(outside.values()) == {f"The images folder must lie inside one of the allowed folders: {root.resolve()}."}
    with pytest.raises(inputs.InputError, match="There is no folder"):
        inputs.allowed_folder("missing", [root])
    with pytest.raises(inputs.InputError, match="off on this server"):
        inputs.allowed_folder(str(root / "posts"), [])
