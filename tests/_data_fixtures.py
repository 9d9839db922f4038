"""Builders of tiny dataset folders in each supported raw layout, quirks included.

Each `build_*` function writes one folder and documents, next to each post, what a correct
loader must do with it; the tests assert the resulting counts by hand-derived numbers.
"""
from __future__ import annotations

import codecs
import io
from pathlib import Path

from PIL import Image

RED = (200, 40, 40)
BLUE = (30, 60, 210)


def image_bytes(kind: str, color: tuple[int, int, int] = RED, size: tuple[int, int] = (8, 8)) -> bytes:
    """Encoded image bytes of one kind (a format or a deliberately broken file)."""
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    if kind == "jpeg":
        image.save(buffer, "JPEG", quality=95)
    elif kind == "png":
        image.save(buffer, "PNG")
    elif kind == "gif":
        image.convert("P").save(buffer, "GIF")
    elif kind == "cmyk":
        image.convert("CMYK").save(buffer, "JPEG", quality=95)
    elif kind == "grey16":
        Image.new("I;16", size, 40000).save(buffer, "PNG")
    elif kind == "palette_transparent":
        # Left half palette index 0 (transparent), right half index 1 (colour).
        palette_image = Image.new("P", size, 0)
        palette_image.putpalette([0, 0, 0, *color] + [0] * (256 * 3 - 6))
        palette_image.paste(1, (size[0] // 2, 0, size[0], size[1]))
        palette_image.save(buffer, "PNG", transparency=0)
    elif kind == "rgba":
        # Left half fully transparent black, right half opaque colour.
        rgba = Image.new("RGBA", size, (*color, 255))
        rgba.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
        rgba.save(buffer, "PNG")
    elif kind == "exif_rotated":
        # Stored 8 wide x 4 high, left half red, right half blue; EXIF orientation 6 says
        # "rotate 90 degrees clockwise to display", so the shown image is 4 wide x 8 high,
        # red on top.
        stored = Image.new("RGB", (8, 4), RED)
        stored.paste(BLUE, (4, 0, 8, 4))
        exif = Image.Exif()
        exif[0x0112] = 6
        stored.save(buffer, "JPEG", quality=95, exif=exif)
    elif kind == "truncated":
        noisy = Image.effect_noise((32, 32), 60).convert("RGB")
        noisy.save(buffer, "JPEG", quality=95)
        return buffer.getvalue()[: len(buffer.getvalue()) // 2]
    elif kind == "empty":
        return b""
    elif kind == "garbage":
        return b"this is not an image at all"
    else:
        raise ValueError(f"unknown image kind {kind!r}")
    return buffer.getvalue()


def write_lines(path: Path, lines: list[str | bytes], bom: bool = False, newline: bytes = b"\r\n") -> None:
    """Write lines (str as UTF-8, bytes verbatim) with the given line ending."""
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = [line.encode("utf-8") if isinstance(line, str) else line for line in lines]
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + newline.join(encoded) + newline)


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)


def jpeg(color: tuple[int, int, int] = RED) -> bytes:
    return image_bytes("jpeg", color)


# --------------------------------------------------------------------------- MVSA, raw layout

def build_mvsa_single_raw(root: Path) -> Path:
    """MVSA-Single raw layout: BOM + header + CRLF label file, messy lines and files.

    clara protocol keeps 22 (positive 10, neutral 5, negative 7); skips labels_disagree 6,
    malformed_line 5, duplicate_id 1, missing_image 1, missing_text 1, empty_text 1,
    undecodable_text 1, unreadable_image 3.
    standard protocol keeps 26 (positive 12, neutral 5, negative 9); skips labels_conflict 1,
    missing_image 2 and the same malformed/duplicate/text/image skips as clara.
    """
    data = root / "data"
    good_text = "a good day out with friends".encode()
    texts: dict[str, bytes] = {}
    images: dict[str, bytes] = {}
    lines: list[str | bytes] = ["ID\ttext,image"]

    def post(post_id: str, labels: str, text: bytes | None = good_text, image: str | None = "jpeg",
             image_name: str | None = None) -> None:
        lines.append(f"{post_id}\t{labels}")
        if text is not None:
            texts[f"{post_id}.txt"] = text
        if image is not None:
            images[image_name or f"{post_id}.jpg"] = image_bytes(image)

    # Agreeing labels, usable files (kept by both protocols): positive 1-10.
    post("1", "positive,positive", text="I love this \U0001F60D #sunny".encode())  # emoji
    post("2", "positive,positive", text="caf\xe9 \u201cquoted\u201d fun".encode("cp1252"))  # not UTF-8
    post("3", "positive,positive", image="png")  # a PNG named .jpg
    post("4", "positive,positive", image="cmyk")
    post("5", "positive,positive", image="rgba", image_name="5.png")  # .png extension
    post("6", "positive,positive", image="exif_rotated")
    post("7", "positive,positive", text=codecs.BOM_UTF8 + b"text file with a BOM")
    post("8", "positive,positive", image="palette_transparent")
    post("9", "POSITIVE,Positive")  # label case does not matter
    post("10", "positive,positive", text=b"two lines\r\nof text\r\n")
    lines.append("")  # blank lines are ignored
    # neutral 11-15
    for post_id in ("11", "12", "13", "14"):
        post(post_id, "neutral,neutral")
    post("15", "neutral,neutral", image="gif")
    # negative 16-22
    for post_id in ("16", "17", "18", "19", "20", "21"):
        post(post_id, "negative,negative")
    post("22", "negative,negative", image="grey16")
    # Disagreeing labels, usable files.
    post("30", "positive,neutral")  # standard: positive
    post("31", "neutral,negative")  # standard: negative
    post("32", "negative,neutral")  # standard: negative
    post("33", "positive,negative")  # standard: labels_conflict
    post("34", "neutral,positive")  # standard: positive
    # Agreeing labels, broken files.
    post("40", "positive,positive", image=None)  # missing_image
    post("41", "neutral,neutral", text=None)  # missing_text
    post("42", "negative,negative", text=b"   \r\n\t ")  # empty_text
    post("43", "positive,positive", text=b"\x81\x8d\x00\x00")  # undecodable_text
    post("44", "positive,positive", image="truncated")  # unreadable_image
    post("45", "negative,negative", image="empty")  # unreadable_image
    post("46", "neutral,neutral", image="garbage")  # unreadable_image
    post("47", "positive,neutral", image=None)  # clara: labels_disagree; standard: missing_image
    lines.append("")
    # Malformed lines (5) and a duplicate id.
    lines += ["50\tpositive", "51\tpositive,happy", "52", "../etc\tpositive,positive",
              "53\tpositive,positive\tneutral,neutral"]
    lines.append("1\tneutral,neutral")  # duplicate_id (the first line for id 1 wins)
    images["99.jpg"] = jpeg()  # an image without a label line is not a post
    write_lines(root / "labelResultAll.txt", lines, bom=True)
    write_files(data, {**texts, **images})
    return root


def build_mvsa_multiple_raw(root: Path) -> Path:
    """MVSA-Multiple raw layout (three annotators per line).

    clara keeps 13 (positive 6, neutral 3, negative 4); skips labels_disagree 6,
    missing_image 1, unreadable_image 1, malformed_line 2.
    standard keeps 16 (positive 7, neutral 4, negative 5); skips no_majority 2,
    labels_conflict 1, missing_image 1, unreadable_image 1, malformed_line 2.
    """
    lines: list[str | bytes] = ["ID\ttext,image\ttext,image\ttext,image"]
    texts: dict[str, bytes] = {}
    images: dict[str, bytes] = {}

    def post(post_id: str, text_labels: str, image_labels: str, image: str | None = "jpeg",
             text: bytes = b"look at this") -> None:
        pairs = [f"{t},{i}" for t, i in zip(text_labels.split(), image_labels.split())]
        lines.append(post_id + "\t" + "\t".join(pairs))
        texts[f"{post_id}.txt"] = text
        if image is not None:
            images[f"{post_id}.jpg"] = image_bytes(image)

    pos, neu, neg = "positive " * 3, "neutral " * 3, "negative " * 3
    post("1", pos, pos, text="so happy \U0001F389".encode())
    post("2", pos, pos, text="na\xefve".encode("cp1252"))
    post("3", pos, pos, image="cmyk")
    post("4", pos, pos, image="png")
    post("5", pos, pos)
    post("6", pos, pos)
    for post_id in ("7", "8", "9"):
        post(post_id, neu, neu)
    for post_id in ("10", "11", "12", "13"):
        post(post_id, neg, neg)
    post("20", "positive positive neutral", pos)  # standard: positive
    post("21", "positive neutral negative", pos)  # standard: no_majority (text)
    post("22", neu, "negative negative positive")  # standard: negative
    post("23", pos, neg)  # standard: labels_conflict
    post("24", "neutral neutral positive", "neutral neutral negative")  # standard: neutral
    post("25", pos, "neutral negative positive")  # standard: no_majority (image)
    post("26", pos, pos, image=None)  # missing_image
    post("27", neu, neu, image="truncated")  # unreadable_image
    lines += ["30\tpositive,positive", "31\tpositive,positive\tneutral,neutral\tbad,bad"]  # malformed
    write_lines(root / "labelResultAll.txt", lines, newline=b"\n")
    write_files(root / "data", {**texts, **images})
    return root


# --------------------------------------------------------------------- MVSA, simplified layout

def build_mvsa_simplified(root: Path) -> Path:
    """Seed layout: images/<id>.jpg + `id | label | text` lines.

    Both protocols keep 7 (positive 2, neutral 2, negative 3); skips malformed_line 2,
    duplicate_id 1, empty_text 1, missing_image 1, unreadable_image 1.
    """
    lines: list[str | bytes] = [
        "id | label | text",
        "1 | positive | I love this \U0001F60D",
        "2 | neutral | just a photo | with a pipe in it",
        "3 | negative | awful day",
        "4 | Positive | capitalised label",
        "5 | 2 | numeric label (2 = negative)",
        "6 | positive |   ",  # empty_text
        "7 | happy | unknown label",  # malformed_line
        "8 | positive",  # malformed_line (no text field)
        "9 | neutral | no image for this one",  # missing_image
        "10 | positive | broken image",  # unreadable_image
        "1 | neutral | duplicate id",  # duplicate_id
        "",
        b"11 | negative | caf\xe9 in cp1252",
        "12 | neutral | a PNG named .jpg",
    ]
    images = {f"{i}.jpg": jpeg() for i in (1, 2, 3, 4, 5, 6, 7, 8, 11)}
    images["10.jpg"] = image_bytes("truncated")
    images["12.jpg"] = image_bytes("png")
    write_lines(root / "labelResultAll.txt", lines, bom=True)
    write_files(root / "images", images)
    return root


# ------------------------------------------------------------------------------------- HFM

HFM_TRAIN_LINES: list[str | bytes] = [
    "['100', 'i love mondays # not', 1]",  # kept (train/100.jpg wins over a broken image/100.jpg)
    "['101', 'nice weather today', 0]",  # kept, train/image/101.png
    "['102', 'what a great idea <user> emoji_123 \U0001F602', 1]",  # kept, image/102.jpg
    "['103', 'this is sarcasm obviously', 1]",  # train_keyword_filter
    "['104', 'check this <url>', 0]",  # train_keyword_filter
    "['105', 'ironically fine', 0]",  # kept: 'ironically' is not a filter token
    "['107', '   ', 0]",  # empty_text
    "['108', 'no image here', 0]",  # missing_image
    "['109', 'broken image', 1]",  # unreadable_image
    "['110', 'a \"quoted\" text with \\'escapes\\'', 0]",  # kept
    "['111', 'unterminated",  # malformed_line
    "['112', 'two fields']",  # malformed_line
    "['113', 'bad label', 2]",  # malformed_line
    "",
    "__import__('os').system('echo never run')",  # malformed_line (literal_eval refuses it)
    b"['114', 'caf\xe9', 0]",  # undecodable_text (not UTF-8)
]
HFM_VAL_LINES: list[str | bytes] = [
    "['200', 'val one', 1, 1]",
    "['201', 'val two', 1, 0]",
    "['202', 'val three', 1, 0]",
    "['203', 'val four sarcasm', 0, 0]",  # the keyword filter is for train only
    "['100', 'an id already in train', 0, 0]",  # duplicate_id
]
HFM_TEST_LINES: list[str | bytes] = [
    "['300', 'test one', 1, 1]",
    "['301', 'test two', 0, 1]",
    "['302', 'test three', 0, 0]",
    "['303', 'five fields', 1, 0, 5]",  # malformed_line
]


def build_hfm(root: Path, variant: str = "mixed") -> Path:
    """Cai et al.'s layout: text/{train,valid2,test2}.txt (CRLF) and images.

    variant "mixed": images spread over train/, train/image/, image/, val/, test/image/, test/;
    "flat": val.txt/test.txt names and every image in image/; "split": every image in <split>/.
    Every variant keeps 12: train 5, val 4, test 3.
    human labels: sarcastic 5 (train 2, val 1, test 2), not_sarcastic 7;
    hashtag labels: sarcastic 6 (train 2, val 3, test 1), not_sarcastic 6.
    Skips: malformed_line 5, train_keyword_filter 2, undecodable_text 1, duplicate_id 1,
    empty_text 1, missing_image 1, unreadable_image 1.
    """
    text = root / "text"
    val_name, test_name = ("val.txt", "test.txt") if variant == "flat" else ("valid2.txt", "test2.txt")
    write_lines(text / "train.txt", HFM_TRAIN_LINES, bom=True)
    write_lines(text / val_name, HFM_VAL_LINES)
    write_lines(text / test_name, HFM_TEST_LINES)
    placement = {  # id -> (folder under root, extension, kind)
        "100": ("train", ".jpg", "jpeg"), "101": ("train/image", ".png", "png"),
        "102": ("image", ".jpg", "jpeg"), "103": ("train", ".jpg", "jpeg"),
        "105": ("train", ".jpg", "cmyk"), "107": ("train", ".jpg", "jpeg"),
        "109": ("train", ".jpg", "truncated"), "110": ("image", ".jpg", "jpeg"),
        "200": ("val", ".jpg", "jpeg"), "201": ("val", ".png", "png"),
        "202": ("val", ".jpg", "png"), "203": ("image", ".jpg", "jpeg"),
        "300": ("test/image", ".jpg", "jpeg"), "301": ("image", ".jpg", "jpeg"),
        "302": ("test", ".jpg", "exif_rotated"),
    }
    split_of = {"1": "train", "2": "val", "3": "test"}
    for post_id, (folder, extension, kind) in placement.items():
        if variant == "flat":
            folder = "image"
        elif variant == "split":
            folder = split_of[post_id[0]]
        write_files(root / folder, {post_id + extension: image_bytes(kind)})
    if variant == "mixed":
        write_files(root / "image", {"100.jpg": image_bytes("garbage")})  # shadowed by train/100.jpg
    return root
