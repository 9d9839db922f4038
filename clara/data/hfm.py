"""HFM: the Twitter multimodal sarcasm dataset of Cai et al. (ACL 2019), with its fixed splits.

("HFM" is the name of Cai et al.'s Hierarchical Fusion Model; the CLARA seed calls the dataset
that. It is not Facebook's Hateful Memes: label 1 = sarcastic, 0 = not sarcastic.)

Layout:
    text/train.txt                         `['<id>', '<text>', <label>]` per line
    text/valid2.txt | val.txt | valid.txt  `['<id>', '<text>', <hashtag_label>, <human_label>]`
    text/test2.txt | test.txt              (same as valid; the first name found is used)
    images: <split>/<id>.jpg|.png, else <split>/image/<id>..., else image/<id>...
            (<split> is train, val or valid, test; looked up in that order)
Files are UTF-8 with CRLF line endings; each line is a Python list literal, parsed with
`ast.literal_eval` (never eval or json). A line with 3 or 4 fields is accepted: the label is
the *last* field (hfm_label="human": the human re-annotation on val/test, Cai et al.'s and
CLMLF's choice) or the third field (hfm_label="hashtag": what the CLARA notebooks used). Train
lines carry one label, so both choices read the same train labels.

The train file is filtered as Cai et al. did: a post whose whitespace tokens include any of
TRAIN_FILTER_TOKENS is skipped ("train_keyword_filter"); their images were never released.

Checks per line, in order: parses with 3-4 fields of the right types ("malformed_line", the
example naming file and line), decodes as UTF-8 ("undecodable_text"), id not seen before in
any split ("duplicate_id"), train keyword filter ("train_keyword_filter"), text not blank
("empty_text"), image found ("missing_image"); image decoding ("unreadable_image") is checked
afterwards by `load_dataset`.
"""
from __future__ import annotations

import ast
from pathlib import Path

from .images import ImageFolderIndex
from .mvsa import VALID_ID, _seen_before, line_example, normalize_text, read_lines
from .types import SPLITS, DatasetError, Sample, SkipReport

TEXT_FILES = {"train": ("train.txt",), "val": ("valid2.txt", "val.txt", "valid.txt"),
              "test": ("test2.txt", "test.txt")}
SPLIT_IMAGE_FOLDERS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}
FLAT_IMAGE_FOLDER = "image"
TRAIN_FILTER_TOKENS = frozenset(
    "exgag sarcasm sarcastic reposting <url> joke humour humor jokes irony ironic".split())
HFM_LABEL_CHOICES = ("human", "hashtag")

EXPECTED_LAYOUT = ("an HFM (Twitter sarcasm) folder with text/train.txt, text/valid2.txt (or "
                   "val.txt/valid.txt), text/test2.txt (or test.txt) and images in train/, val/, "
                   "test/ (optionally in an image/ subfolder) or one image/ folder")


def find_text_files(data_dir: Path) -> dict[str, Path]:
    """The text file used for each split; DatasetError if the folder is not an HFM folder."""
    text_dir = data_dir / "text"
    if not text_dir.is_dir():
        raise DatasetError(f"no text/ folder in {data_dir}: expected {EXPECTED_LAYOUT}")
    found = {}
    for split_name, names in TEXT_FILES.items():
        path = next((text_dir / n for n in names if (text_dir / n).is_file()), None)
        if path is None:
            raise DatasetError(f"no {' or '.join(names)} in {text_dir}: expected {EXPECTED_LAYOUT}")
        found[split_name] = path
    return found


def image_folders(data_dir: Path, split_name: str) -> list[Path]:
    """Where the images of one split are looked up, in order."""
    folders = []
    for name in SPLIT_IMAGE_FOLDERS[split_name]:
        folders += [data_dir / name, data_dir / name / "image"]
    return folders + [data_dir / FLAT_IMAGE_FOLDER]


def parse_line(line: str) -> tuple[str, str, list[int]] | str:
    """(id, text, labels) from one list-literal line, or a description of what is wrong."""
    try:
        fields = ast.literal_eval(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        return f"not a Python list literal ({type(exc).__name__})"
    if not isinstance(fields, (list, tuple)) or len(fields) not in (3, 4):
        count = len(fields) if isinstance(fields, (list, tuple)) else "not a list"
        return f"expected a list of 3 or 4 fields, got {count}"
    post_id, text, *labels = fields
    if isinstance(post_id, bool) or not isinstance(post_id, (str, int)) or not VALID_ID.fullmatch(str(post_id)):
        return f"bad id {post_id!r}"
    if not isinstance(text, str):
        return "the text field is not a string"
    if any(isinstance(v, bool) or v not in (0, 1) or not isinstance(v, int) for v in labels):
        return f"labels must be 0 or 1, got {labels}"
    return str(post_id), text, labels


def load_hfm(data_dir: Path, hfm_label: str, skipped: SkipReport,
             skipped_ids: dict[str, str]) -> tuple[str, dict[str, list[Sample]]]:
    """Read an HFM folder; return (layout, kept samples per official split).

    layout: "split-folders" (every image found under train/, val/, test/), "flat-images" (all
    in image/) or "mixed".
    """
    if hfm_label not in HFM_LABEL_CHOICES:
        raise DatasetError(f"unknown hfm_label {hfm_label!r}; choose human (last field, standard) or "
                           "hashtag (third field, as the CLARA notebooks)")
    text_files = find_text_files(data_dir)
    indexes: dict[Path, ImageFolderIndex] = {}
    for split_name in SPLITS:
        for folder in image_folders(data_dir, split_name):
            indexes.setdefault(folder, ImageFolderIndex(folder))
    if not any(index.exists for index in indexes.values()):
        raise DatasetError(f"no image folder in {data_dir}: expected {EXPECTED_LAYOUT}")

    def skip(reason: str, example: str, post_id: str | None) -> None:
        skipped.add(reason, example)
        if post_id is not None:
            skipped_ids.setdefault(post_id, reason)

    seen: set[str] = set()
    flat_dir = data_dir / FLAT_IMAGE_FOLDER
    used_flat = used_split = False
    splits: dict[str, list[Sample]] = {}
    for split_name in SPLITS:
        path = text_files[split_name]
        folders = image_folders(data_dir, split_name)
        kept: list[Sample] = []
        for line_number, raw_line in read_lines(path):
            if not raw_line.strip():
                continue
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError:
                skip("undecodable_text", line_example(path, line_number, raw_line, "not UTF-8"), None)
                continue
            parsed = parse_line(line.strip())
            if isinstance(parsed, str):
                skip("malformed_line", line_example(path, line_number, line, parsed), None)
                continue
            post_id, raw_text, labels = parsed
            if _seen_before(post_id, seen, skip, line_example(path, line_number, line)):
                continue
            if split_name == "train" and not TRAIN_FILTER_TOKENS.isdisjoint(raw_text.split()):
                skip("train_keyword_filter", post_id, post_id)
                continue
            text = normalize_text(raw_text)
            if not text:
                skip("empty_text", post_id, post_id)
                continue
            image_path = next((p for p in (indexes[f].find(post_id) for f in folders) if p is not None), None)
            if image_path is None:
                skip("missing_image", post_id, post_id)
                continue
            if image_path.parent == flat_dir:
                used_flat = True
            else:
                used_split = True
            label = labels[-1] if hfm_label == "human" else labels[0]
            annotations = ({"hashtag_label": labels[0], "human_label": labels[1]} if len(labels) == 2
                           else {"hashtag_label": labels[0]})
            kept.append(Sample(id=post_id, text=text, image_path=image_path, label=label,
                               annotations={**annotations, "official_split": split_name,
                                            "text_file": path.name}))
        splits[split_name] = kept
    layout = "mixed" if used_flat and used_split else "flat-images" if used_flat else "split-folders"
    return layout, splits
