"""Synthetic datasets in the exact raw formats of MVSA-Single, MVSA-Multiple and HFM.

Each post carries an image cue (a yellow "positive" or blue "negative" square on a noisy
background, inside the centre crop) and a text cue (one positive or negative word among filler
words); neither alone tells the label. MVSA: agreeing cues give their polarity, else neutral;
HFM: sarcastic iff the cues disagree. Cue pairs are balanced, so one modality alone reaches ~50 %.
With `quirks=True` known messy cases are planted (BOM, CRLF, malformed lines, latin-1 text,
missing or unreadable files, disguised image formats, disagreeing annotations, Cai keywords);
what a correct loader keeps and skips is written to `synthetic_meta.json` (the loaders ignore it).
"""
from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clara.data import SKIP_REASONS
from clara.data.mvsa import ANNOTATORS
from clara.datasets import MVSA_LABELS, REGISTRY

FORMATS = ("mvsa_single", "mvsa_multiple", "hfm")  # the registry datasets this module can write
META_FILENAME = "synthetic_meta.json"
# With quirks every planted case needs its own post, and HFM's val/test need room for theirs.
MIN_POSTS_WITH_QUIRKS = 40
MIN_POSTS = {"mvsa_single": 1, "mvsa_multiple": 1, "hfm": 10}

POSITIVE_WORDS = ("love", "great", "happy", "awesome", "beautiful", "wonderful", "amazing", "best")
NEGATIVE_WORDS = ("hate", "awful", "terrible", "sad", "horrible", "worst", "disgusting", "ugly")
CUE_WORDS = {"positive": POSITIVE_WORDS, "negative": NEGATIVE_WORDS}
# Saturated colours far from the muted grey background (and from each other in hue and
# brightness), so even a tiny encoder can find the cue.
CUE_COLOURS = {"positive": (255, 200, 0), "negative": (20, 70, 240)}
CUE_FRACTION = 0.2  # cue side / shorter image side: 19 px at 96 px, ~1.4 patch cells of 16 px

NEUTRAL_WORDS = (
    "just", "got", "the", "a", "new", "bus", "today", "at", "station", "with", "my", "friend",
    "going", "to", "work", "morning", "after", "lunch", "this", "is", "our", "street", "on",
    "tuesday", "photo", "from", "downtown", "meeting", "later", "coffee", "table", "window",
    "train", "people", "city", "park", "walk", "weekend", "evening", "office", "shop", "car",
    "road", "building", "some", "again", "here", "there", "then", "we", "they", "two", "three",
    "sunday", "view", "of", "in", "for", "and", "back", "home", "tonight", "waiting", "line",
    "corner", "bridge", "river", "dog", "cat", "sky", "school", "class", "game", "team", "news",
    "update", "week", "year", "light", "door", "wall", "chair", "phone", "picture",
)
LATIN1_WORDS = ("café", "señor", "naïve", "£5", "déjà", "über")
EMOJI = ("📷", "☕", "🚌", "📍")

# What each planted quirk does; "skip" roles are skipped by a correct loader under every
# protocol, "handled" roles are kept with their label intact.
MVSA_SKIP_ROLES = {
    "missing_image": "missing_image",
    "missing_text": "missing_text",
    "empty_text": "empty_text",
    "truncated_jpeg": "unreadable_image",
    "zero_byte_image": "unreadable_image",
}
HFM_SKIP_ROLES = {
    "missing_image": "missing_image",
    "empty_text": "empty_text",
    "truncated_jpeg": "unreadable_image",
    "zero_byte_image": "unreadable_image",
}
IMAGE_ROLES = ("png_as_jpg", "cmyk_jpeg", "palette_gif_as_jpg", "exif_rotated")
MVSA_HANDLED_ROLES = {**{r: 1 for r in IMAGE_ROLES}, "latin1_text": 2, "emoji_text": 2,
                      "bom_text": 1, "crlf_text": 1, "multiline_text": 1}
HFM_HANDLED_ROLES = {**{r: 1 for r in IMAGE_ROLES}, "emoji_text": 2, "quote_in_text": 1}

POS, NEU, NEG = "positive", "neutral", "negative"
# Posts whose annotations disagree: the clara protocol drops them all, the standard protocol
# (Xu et al. 2017; >= 2-of-3 majority per modality for Multiple) merges or drops them.
# role -> (forced cues (text, image) or None, text annotations, image annotations, standard outcome)
ANNOTATION_ROLES: dict[str, dict[str, tuple[tuple[str, str] | None, list[str], list[str], str]]] = {
    "mvsa_single": {
        "merge_to_positive": ((POS, POS), [NEU], [POS], POS),
        "merge_to_negative": ((NEG, NEG), [NEG], [NEU], NEG),
        "conflict": (None, [POS], [NEG], "skip:labels_conflict"),
    },
    "mvsa_multiple": {
        "merge_to_positive": ((POS, POS), [POS, POS, NEU], [POS, POS, POS], POS),
        "merge_to_negative": ((NEG, NEG), [NEG, NEG, NEG], [NEU, NEU, NEU], NEG),
        "no_majority": (None, [POS, NEU, NEG], [NEU, NEU, NEU], "skip:no_majority"),
        "conflict": (None, [POS, POS, POS], [NEG, NEG, POS], "skip:labels_conflict"),
    },
}


@dataclass
class _Post:
    id: str
    text_cue: str
    image_cue: str
    label: str  # the true label (MVSA: label name; HFM: the human label's name)
    split: str | None = None  # HFM only: train | val | test
    role: str | None = None  # planted quirk, if any
    tokens: list[str] = field(default_factory=list)
    word: str = ""
    word_index: int = -1
    box: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    image_file: str | None = None
    annotations: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, str] = field(default_factory=dict)  # protocol/label choice -> label or "skip:<reason>"


def mvsa_label(text_cue: str, image_cue: str) -> str:
    """MVSA rule: agreeing cues give their polarity, disagreeing cues give neutral."""
    return text_cue if text_cue == image_cue else NEU


def hfm_label(text_cue: str, image_cue: str) -> str:
    """HFM rule: sarcastic iff the text cue and the image cue disagree."""
    return "sarcastic" if text_cue != image_cue else "not_sarcastic"


def write_synthetic(fmt: str, out_dir: Path, n: int, seed: int = 0, image_size: int = 96,
                    quirks: bool = True, realistic: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Write a synthetic dataset of `n` posts in the raw format `fmt` to `out_dir`.

    Returns a summary (true and expected class counts, expected skips per protocol); the same
    information and per-post details go to `out_dir/synthetic_meta.json`. Output files are
    byte-identical for identical arguments. `realistic` writes photo-sized JPEGs (500x375 to
    1024x768) and tweet-length texts (15-30 words) instead of `image_size` squares.
    `overwrite` replaces a folder previously written by this function (never any other folder).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown synthetic format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    minimum = MIN_POSTS_WITH_QUIRKS if quirks else MIN_POSTS[fmt]
    if n < minimum:
        hint = " (or pass quirks=False / --no-quirks)" if quirks else ""
        raise ValueError(f"n={n} is too small for {fmt}: need at least {minimum} posts{hint}")
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small: need at least 16 px")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)

    rng = np.random.default_rng(seed)
    if fmt == "hfm":
        meta = _write_hfm(out_dir, n, rng, image_size, quirks, realistic)
    else:
        meta = _write_mvsa(fmt, out_dir, n, rng, image_size, quirks, realistic)
    meta["generator"] = {"format": fmt, "n": n, "seed": seed, "image_size": image_size,
                         "quirks": quirks, "realistic": realistic}
    (out_dir / META_FILENAME).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return {
        "format": fmt,
        "out_dir": str(out_dir),
        "n": n,
        "seed": seed,
        "labels": meta["labels"],
        "true_class_counts": meta["true_class_counts"],
        "expected": meta["expected"],
        "handled": meta["handled"],
    }


def read_meta(data_dir: Path) -> dict[str, Any]:
    """Load `synthetic_meta.json` from a folder written by `write_synthetic`."""
    return json.loads((Path(data_dir) / META_FILENAME).read_text(encoding="utf-8"))


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder or overwrite it")
        if not (out_dir / META_FILENAME).is_file():
            raise FileExistsError(f"refusing to overwrite {out_dir}: it has no {META_FILENAME}, so it "
                                  "was not written by the synthetic generator")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------
# Posts: cues, roles, texts, images


def _balanced_cues(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """(text cue, image cue) pairs, the four combinations as equal as n allows, shuffled."""
    combos = [(POS, POS), (POS, NEG), (NEG, POS), (NEG, NEG)]
    pairs = [combos[i % 4] for i in range(n)]
    return [pairs[i] for i in rng.permutation(n)]


def _assign_roles(rng: np.random.Generator, posts: list[_Post], roles: dict[str, int],
                  allowed: set[str] | None = None) -> None:
    """Give `count` posts each role, drawn at random among posts without a role yet."""
    free = [i for i, p in enumerate(posts) if p.role is None and (allowed is None or p.split in allowed)]
    needed = sum(roles.values())
    if needed > len(free):
        raise ValueError(f"not enough posts to plant {needed} quirks; increase n")
    chosen = [free[i] for i in rng.permutation(len(free))[:needed]]
    names = [name for name, count in roles.items() for _ in range(count)]
    for index, name in zip(chosen, names):
        posts[index].role = name


def _make_tokens(rng: np.random.Generator, post: _Post, style: str, realistic: bool) -> None:
    """Neutral filler with one sentiment word at a random position (recorded in the post)."""
    low, high = (15, 30) if realistic else (5, 15)
    n_words = int(rng.integers(low, high + 1))
    filler: list[str] = []
    while len(filler) < n_words - 1:
        filler.extend(_filler_token(rng, style))
    filler = filler[:n_words - 1]
    extras = {"latin1_text": LATIN1_WORDS, "emoji_text": EMOJI}.get(post.role or "")
    if extras:  # replace one filler token so the word count stays in range
        filler[int(rng.integers(len(filler)))] = extras[int(rng.integers(len(extras)))]
    if post.role == "quote_in_text":
        filler[int(rng.integers(len(filler)))] = "it's"
    if post.role in ("keyword_filter", "keyword_filter_no_image"):
        filler[int(rng.integers(len(filler)))] = ("sarcasm", "joke", "<url>")[int(rng.integers(3))]
    if post.role == "keyword_kept_in_test":  # the filter is for train only
        filler[int(rng.integers(len(filler)))] = "sarcasm"
    words = CUE_WORDS[post.text_cue]
    post.word = words[int(rng.integers(len(words)))]
    post.word_index = int(rng.integers(n_words))
    post.tokens = filler[:post.word_index] + [post.word] + filler[post.word_index:]


def _filler_token(rng: np.random.Generator, style: str) -> list[str]:
    """One filler token (two for an HFM hashtag), tweet-like for the style."""
    word = NEUTRAL_WORDS[int(rng.integers(len(NEUTRAL_WORDS)))]
    r = float(rng.random())
    if style == "mvsa":  # raw tweets: mentions, hashtags, t.co links
        if r < 0.05:
            return [f"@user{int(rng.integers(1000))}"]
        if r < 0.10:
            return [f"#{word}"]
        if r < 0.13:
            return [f"http://t.co/{int(rng.integers(16 ** 6)):06x}"]
        return [word]
    # HFM: lowercased and tokenized with placeholders; never <url>, a Cai filter keyword
    if r < 0.05:
        return ["<user>"]
    if r < 0.08:
        return ["<num>"]
    if r < 0.11:
        return [f"emoji_{int(rng.integers(100, 1000))}"]
    if r < 0.15:
        return ["#", word]
    return [word]


def _image_size(rng: np.random.Generator, image_size: int, realistic: bool) -> tuple[int, int]:
    if not realistic:
        return image_size, image_size
    width = int(rng.integers(500, 1025))
    aspect = (4 / 3, 3 / 2, 16 / 9, 1.0)[int(rng.integers(4))]  # common photo shapes
    height = min(768, max(375, round(width / aspect)))
    if rng.random() < 0.2:  # some portrait photos
        width, height = height, width
    return width, height


def _make_image(rng: np.random.Generator, cue: str, width: int, height: int) -> tuple[Image.Image, list[int]]:
    """Noisy, muted textured background with a filled cue square; returns (image, box)."""
    grid = rng.integers(70, 180, size=(4, 4, 1)) + rng.integers(-20, 21, size=(4, 4, 3))
    low = Image.fromarray(grid.clip(0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    pixels = np.asarray(low, dtype=np.int16) + rng.integers(-25, 26, size=(height, width, 3), dtype=np.int16)
    short = min(width, height)
    for _ in range(int(rng.integers(1, 4))):  # a few grey blocks, so the cue is not the only object
        bw, bh = (int(v) for v in rng.integers(short // 8, short // 3, size=2))
        bx, by = int(rng.integers(0, width - bw)), int(rng.integers(0, height - bh))
        pixels[by:by + bh, bx:bx + bw] += np.int16(rng.integers(-50, 51))
    side = max(4, round(CUE_FRACTION * short))
    # Inside the central short x short square, which a resize + center crop keeps.
    x0 = (width - short) // 2 + int(rng.integers(0, short - side + 1))
    y0 = (height - short) // 2 + int(rng.integers(0, short - side + 1))
    pixels[y0:y0 + side, x0:x0 + side] = CUE_COLOURS[cue]
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    return image, [x0, y0, x0 + side, y0 + side]


def _encode_image(image: Image.Image, role: str | None) -> bytes | None:
    """The file bytes for an image, with the planted image quirk; None means no file."""
    if role in ("missing_image", "keyword_filter_no_image"):
        return None
    if role == "zero_byte_image":
        return b""
    buffer = io.BytesIO()
    if role == "png_as_jpg":
        image.save(buffer, format="PNG")
    elif role == "cmyk_jpeg":
        image.convert("CMYK").save(buffer, format="JPEG", quality=92)
    elif role == "palette_gif_as_jpg":
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buffer, format="GIF")
    elif role == "exif_rotated":
        # Stored pixels are turned 90 degrees counter-clockwise; EXIF orientation 6 tells a
        # viewer (and ImageOps.exif_transpose) to turn them back, restoring `image`.
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    else:
        image.save(buffer, format="JPEG", quality=92)
    data = buffer.getvalue()
    if role == "truncated_jpeg":
        return data[:len(data) // 2]
    return data


def _write_post_image(rng: np.random.Generator, post: _Post, path: Path, rel: str,
                      image_size: int, realistic: bool) -> None:
    width, height = _image_size(rng, image_size, realistic)
    image, post.box = _make_image(rng, post.image_cue, width, height)
    post.size = [width, height]
    data = _encode_image(image, post.role)
    if data is not None:
        path.write_bytes(data)
        post.image_file = rel


def _text_bytes(post: _Post, rng: np.random.Generator) -> bytes:
    """The MVSA text file content, with the planted text quirk."""
    if post.role == "empty_text":
        return b" \n"
    text = " ".join(post.tokens)
    if post.role == "latin1_text":
        return text.encode("latin-1")
    if post.role == "bom_text":
        return b"\xef\xbb\xbf" + text.encode("utf-8")
    if post.role == "crlf_text":
        return (text + "\r\n").encode("utf-8")
    if post.role == "multiline_text":
        cut = int(rng.integers(1, len(post.tokens)))
        return (" ".join(post.tokens[:cut]) + "\n" + " ".join(post.tokens[cut:]) + "\n").encode("utf-8")
    return text.encode("utf-8")


# ---------------------------------------------------------------------------------------------
# MVSA-Single / MVSA-Multiple raw layout


def _write_mvsa(fmt: str, out_dir: Path, n: int, rng: np.random.Generator, image_size: int,
                quirks: bool, realistic: bool) -> dict[str, Any]:
    annotators = ANNOTATORS[fmt]
    n_malformed = 2 if quirks else 0
    # Ids are not contiguous in the real files (4,869 posts with ids 1-5129).
    id_pool = rng.choice(np.arange(1, int(n * 1.08) + 20), size=n + n_malformed, replace=False)
    post_ids = sorted(int(i) for i in id_pool[:n])
    malformed_ids = [int(i) for i in id_pool[n:]]
    posts = [_Post(id=str(pid), text_cue=t, image_cue=i, label=mvsa_label(t, i))
             for pid, (t, i) in zip(post_ids, _balanced_cues(rng, n))]

    annotation_roles = ANNOTATION_ROLES[fmt] if quirks else {}
    if quirks:
        _assign_roles(rng, posts, {**{r: 1 for r in annotation_roles}, **{r: 1 for r in MVSA_SKIP_ROLES},
                                   **MVSA_HANDLED_ROLES})

    data_dir = out_dir / "data"
    data_dir.mkdir()
    for post in posts:
        forced, text_ann, image_ann, standard = annotation_roles.get(post.role, (None, None, None, None))
        if forced:
            post.text_cue, post.image_cue = forced
            post.label = mvsa_label(*forced)
        _make_tokens(rng, post, "mvsa", realistic)
        _write_post_image(rng, post, data_dir / f"{post.id}.jpg", f"data/{post.id}.jpg", image_size, realistic)
        if post.role != "missing_text":
            (data_dir / f"{post.id}.txt").write_bytes(_text_bytes(post, rng))
        if text_ann is None:
            text_ann, image_ann = [post.label] * annotators, [post.label] * annotators
        post.annotations = {"text": text_ann, "image": image_ann}
        if post.role in annotation_roles:
            post.outcome = {"clara": _skip("labels_disagree"),
                            "standard": _skip(standard[len("skip:"):]) if standard.startswith("skip:") else standard}
        elif post.role in MVSA_SKIP_ROLES:
            reason = _skip(MVSA_SKIP_ROLES[post.role])
            post.outcome = {"clara": reason, "standard": reason}
        else:
            post.outcome = {"clara": post.label, "standard": post.label}

    lines = ["ID\t" + "\t".join(["text,image"] * annotators)]
    lines += [post.id + "\t" + "\t".join(f"{t},{i}" for t, i in zip(post.annotations["text"],
                                                                     post.annotations["image"]))
              for post in posts]
    malformed_lines = []
    if quirks:
        if annotators == 1:  # a pair without its image label; an id with nothing after it
            malformed_lines = [f"{malformed_ids[0]}\tpositive", f"{malformed_ids[1]}"]
        else:  # two annotators instead of three; a pair without a comma
            malformed_lines = [f"{malformed_ids[0]}\tpositive,positive\tneutral,neutral",
                               f"{malformed_ids[1]}\tnegative,negative\tnegative\tnegative,negative"]
        for line in malformed_lines + [""]:  # the last one is the blank line
            lines.insert(int(rng.integers(1, len(lines) + 1)), line)
    newline = "\r\n" if quirks else "\n"
    content = newline.join(lines) + newline
    (out_dir / "labelResultAll.txt").write_bytes((b"\xef\xbb\xbf" if quirks else b"") + content.encode("utf-8"))

    protocols = ("clara", "standard")
    expected = {p: _expected_counts(posts, p, list(REGISTRY[fmt].labels), malformed_lines) for p in protocols}
    # The clara split is computed over the posts the notebooks keep (empty texts and unreadable
    # images too); load_dataset then removes those, so only the sizes before that are fixed.
    split_over = Counter(p.label for p in posts
                         if p.outcome["clara"] in (*MVSA_LABELS, _skip("empty_text"), _skip("unreadable_image")))
    expected["clara"]["splits_before_removal"] = _clara_split_sizes(split_over)
    handled = _handled(posts, MVSA_HANDLED_ROLES, quirks)
    if quirks:
        handled.update({"header_line": 1, "label_file_bom": 1, "label_file_crlf": 1, "blank_line": 1})
    return _meta(fmt, "raw", posts, expected, handled, {
        "rule": "label = text cue if text cue == image cue else neutral",
        "expected_note": ("expected[protocol] is what a correct loader reports with check_images=True; "
                          "clara splits follow the published rule (per class floor(0.70 c) train, "
                          "floor(0.15 c) val, the rest test). blank_line is ignored, not counted."),
    })


def _clara_split_sizes(class_counts: dict[str, int]) -> dict[str, int]:
    """Per class floor(0.70 c) / floor(0.15 c) / rest: gives 1,813 / 387 / 392 on 1,398 / 470 / 724."""
    train = sum(int(c * 0.7) for c in class_counts.values())  # the notebooks' float products
    val = sum(int(c * 0.15) for c in class_counts.values())
    return {"train": train, "val": val, "test": sum(class_counts.values()) - train - val}


# ---------------------------------------------------------------------------------------------
# HFM (Twitter sarcasm) raw layout


def _write_hfm(out_dir: Path, n: int, rng: np.random.Generator, image_size: int,
               quirks: bool, realistic: bool) -> dict[str, Any]:
    labels = list(REGISTRY["hfm"].labels)
    n_val = n_test = max(1, n // 10)
    splits = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    # 18-digit tweet ids, unique; two spare ones for the malformed lines.
    id_set: set[int] = set()
    while len(id_set) < n + 2:
        id_set.update(int(i) for i in rng.integers(10 ** 17, 10 ** 18, size=n + 2 - len(id_set)))
    ids = sorted(id_set)
    id_list = [str(ids[i]) for i in rng.permutation(len(ids))]
    posts = [_Post(id=pid, text_cue=t, image_cue=i, label=hfm_label(t, i), split=split)
             for pid, (t, i), split in zip(id_list, _balanced_cues(rng, n), splits)]
    if quirks:
        _assign_roles(rng, posts, {"keyword_filter": 2, "keyword_filter_no_image": 1}, {"train"})
        _assign_roles(rng, posts, {"hashtag_differs": 2}, {"val"})
        _assign_roles(rng, posts, {"hashtag_differs": 2, "keyword_kept_in_test": 1}, {"test"})
        _assign_roles(rng, posts, {**{r: 1 for r in HFM_SKIP_ROLES}, **HFM_HANDLED_ROLES})

    (out_dir / "text").mkdir()
    image_dir = out_dir / "image"
    image_dir.mkdir()
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for post in posts:
        _make_tokens(rng, post, "hfm", realistic)
        _write_post_image(rng, post, image_dir / f"{post.id}.jpg", f"image/{post.id}.jpg", image_size, realistic)
        human = labels.index(post.label)
        hashtag = 1 - human if post.role == "hashtag_differs" else human
        text = "" if post.role == "empty_text" else " ".join(post.tokens)
        fields: list[Any] = [post.id, text, human] if post.split == "train" else [post.id, text, hashtag, human]
        post.annotations = {"hashtag_label": hashtag, "human_label": human}
        lines[post.split].append(repr(fields))  # repr of a list of str/int is Cai's literal format
        if post.role in ("keyword_filter", "keyword_filter_no_image"):
            # The filter applies to the text, before any file check: Cai et al. never released
            # the images of the posts it drops.
            reason = _skip("train_keyword_filter")
            post.outcome = {"human": reason, "hashtag": reason}
        elif post.role in HFM_SKIP_ROLES:
            reason = _skip(HFM_SKIP_ROLES[post.role])
            post.outcome = {"human": reason, "hashtag": reason}
        else:
            post.outcome = {"human": labels[human], "hashtag": labels[hashtag]}

    malformed_lines = []
    if quirks:
        # Truncated list literals (a line cut short, as in a partly copied file).
        extra_ids = id_list[n:n + 2]
        malformed_lines = [(f"['{extra_ids[0]}', 'just got to the", "train"),
                           (f"['{extra_ids[1]}', 'waiting at the station', 0", "test")]
        for line, split in malformed_lines:
            lines[split].insert(int(rng.integers(0, len(lines[split]) + 1)), line)
        lines["train"].insert(int(rng.integers(1, len(lines["train"]))), "")  # a blank line
    for split, filename in (("train", "train.txt"), ("val", "valid2.txt"), ("test", "test2.txt")):
        content = "".join(line + "\r\n" for line in lines[split]).encode("utf-8")
        bom = b"\xef\xbb\xbf" if quirks and split == "val" else b""
        (out_dir / "text" / filename).write_bytes(bom + content)

    expected = {choice: _expected_counts(posts, choice, labels, [m for m, _ in malformed_lines])
                for choice in ("human", "hashtag")}
    for choice in expected:
        kept_splits = Counter(p.split for p in posts if not p.outcome[choice].startswith("skip:"))
        expected[choice]["splits"] = {s: kept_splits[s] for s in ("train", "val", "test")}
    handled = _handled(posts, {**HFM_HANDLED_ROLES, "hashtag_differs": 4, "keyword_kept_in_test": 1}, quirks)
    if quirks:
        handled.update({"crlf": 3, "valid_file_bom": 1, "blank_line": 1})
    return _meta("hfm", "flat-images", posts, expected, handled, {
        "rule": "label = sarcastic if text cue != image cue else not_sarcastic (human label, last field)",
        "expected_note": ("expected['human'] is the default label choice (last field), expected['hashtag'] "
                          "the third field (--hfm-label hashtag); both with check_images=True and the "
                          "official splits. blank_line is ignored, not counted."),
    })


# ---------------------------------------------------------------------------------------------
# Expected loader results and the meta file


def _expected_counts(posts: list[_Post], key: str, labels: list[str],
                     malformed_lines: list[str]) -> dict[str, Any]:
    kept = Counter(p.outcome[key] for p in posts if not p.outcome[key].startswith("skip:"))
    skipped = Counter(p.outcome[key][len("skip:"):] for p in posts if p.outcome[key].startswith("skip:"))
    if malformed_lines:
        skipped["malformed_line"] += len(malformed_lines)
    return {
        "total": sum(kept.values()),
        "class_counts": {label: kept.get(label, 0) for label in labels},
        "skipped": dict(sorted(skipped.items())),
        "malformed_lines": malformed_lines,
    }


def _skip(reason: str) -> str:
    """A post outcome meaning "skipped" for `reason`, one of the loaders' SKIP_REASONS."""
    if reason not in SKIP_REASONS:
        raise ValueError(f"{reason!r} is not a loader skip reason")
    return "skip:" + reason


def _handled(posts: list[_Post], roles: dict[str, int], quirks: bool) -> dict[str, int]:
    if not quirks:
        return {}
    counts = Counter(p.role for p in posts if p.role in roles)
    return {role: counts[role] for role in roles}


def _meta(fmt: str, layout: str, posts: list[_Post], expected: dict[str, Any], handled: dict[str, int],
          notes: dict[str, str]) -> dict[str, Any]:
    return {
        "format": fmt,
        "layout": layout,
        "labels": list(REGISTRY[fmt].labels),
        **notes,
        "cue_words": {"positive": list(POSITIVE_WORDS), "negative": list(NEGATIVE_WORDS)},
        "cue_colours": {k: list(v) for k, v in CUE_COLOURS.items()},
        "box_coordinates": ("[x0, y0, x1, y1] in pixels of the upright image, x1/y1 exclusive; for an "
                            "exif_rotated post that is the image after EXIF transposition (the stored "
                            "pixels are rotated 90 degrees counter-clockwise)"),
        "word_index_note": "index among the whitespace-separated tokens of the text (BOM removed)",
        "true_class_counts": {label: sum(1 for p in posts if p.label == label) for label in list(REGISTRY[fmt].labels)},
        "expected": expected,
        "handled": handled,
        "posts": {p.id: _post_record(p) for p in posts},
    }


def _post_record(post: _Post) -> dict[str, Any]:
    empty = post.role == "empty_text"
    record: dict[str, Any] = {
        "label": post.label,
        "text_cue": post.text_cue,
        "image_cue": post.image_cue,
        "word": None if empty else post.word,
        "word_index": -1 if empty else post.word_index,
        "text": "" if empty else " ".join(post.tokens),
        "box": post.box,
        "image_size": post.size,
        "image_file": post.image_file,
        "annotations": post.annotations,
        "expected": post.outcome,
        "quirk": post.role,
    }
    if post.split is not None:
        record["split"] = post.split
    return record
