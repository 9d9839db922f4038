"""HFM reader: the Twitter multimodal sarcasm dataset of Cai et al. (ACL 2019), with its fixed splits.

Not Facebook's Hateful Memes ("HFM" is Cai et al.'s model, whose name the CLARA seed gives the
dataset): label 1 = sarcastic. Layout: text/train.txt, text/valid2.txt (or val.txt, valid.txt),
text/test2.txt (or test.txt), UTF-8, one Python list literal per line (`parse_line`, never eval);
images as `image_folders` looks them up. The label is the last field (hfm_label="human": the
human re-annotation of val/test, Cai et al.'s and CLMLF's choice) or the third ("hashtag", the
CLARA notebooks'); train lines carry one. Train posts holding a TRAIN_FILTER_TOKENS token are
skipped, as Cai et al. did (their images were never released).
"""
from __future__ import annotations

import ast
from pathlib import Path

from .images import ImageFolderIndex
from .mvsa import VALID_ID, line_example, normalize_text, read_lines
from .types import OFFICIAL_SPLIT, SPLITS, Candidate, DatasetError, ReadRequest, Sample

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


def load_hfm(request: ReadRequest) -> tuple[str, list[Sample]]:
    """Read an HFM folder; return (layout, kept samples, split by split, each marked with its
    OFFICIAL_SPLIT). Skips go to the request.

    layout: "split-folders" (every image found under train/, val/, test/), "flat-images" (all
    in image/) or "mixed".
    """
    data_dir, hfm_label, skip = request.data_dir, request.hfm_label, request.skip
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

    seen: set[str] = set()
    flat_dir = data_dir / FLAT_IMAGE_FOLDER
    used_flat = used_split = False
    samples: list[Sample] = []
    for split_name in SPLITS:
        path = text_files[split_name]
        folders = image_folders(data_dir, split_name)
        # Checks in order, the first failing one the skip reason: UTF-8, parses, new id, keyword
        # filter (train), text not blank, image found; load_dataset decodes the images later.
        # A post with its image is a candidate even when refused: the notebook keeps it.
        for line_number, raw_line in read_lines(path):
            if not raw_line.strip():
                continue
            try:
                line, undecodable = raw_line.decode("utf-8"), False
            except UnicodeDecodeError:  # the notebook reads it with errors="ignore"
                line, undecodable = raw_line.decode("utf-8", errors="ignore"), True
            parsed = parse_line(line.strip())
            if isinstance(parsed, str) or undecodable:
                if undecodable:
                    skip("undecodable_text", line_example(path, line_number, raw_line, "not UTF-8"), None)
                else:
                    skip("malformed_line", line_example(path, line_number, line, parsed), None)
                if not isinstance(parsed, str) and _find_image(indexes, folders, parsed[0]) is not None:
                    request.candidates.append(Candidate(parsed[0], _label(parsed[2], hfm_label), split_name,
                                                        refusal="undecodable_text"))
                continue
            post_id, raw_text, labels = parsed
            label, text = _label(labels, hfm_label), normalize_text(raw_text)
            image_path = _find_image(indexes, folders, post_id)
            reason, example = None, post_id
            if post_id in seen:
                reason, example = "duplicate_id", line_example(path, line_number, line)
            elif split_name == "train" and not TRAIN_FILTER_TOKENS.isdisjoint(raw_text.split()):
                reason = "train_keyword_filter"
            elif not text:
                reason = "empty_text"
            elif image_path is None:
                reason = "missing_image"
            seen.add(post_id)
            if reason is not None:
                skip(reason, example, None if reason == "duplicate_id" else post_id)
                if image_path is not None:
                    request.candidates.append(Candidate(post_id, label, split_name, refusal=reason))
                continue
            if image_path.parent == flat_dir:
                used_flat = True
            else:
                used_split = True
            annotations = ({"hashtag_label": labels[0], "human_label": labels[1]} if len(labels) == 2
                           else {"hashtag_label": labels[0]})
            request.candidates.append(Candidate(post_id, label, split_name))
            samples.append(Sample(id=post_id, text=text, image_path=image_path, label=label,
                                  annotations={**annotations, OFFICIAL_SPLIT: split_name,
                                               "text_file": path.name}))
    layout = "mixed" if used_flat and used_split else "flat-images" if used_flat else "split-folders"
    return layout, samples


def _label(labels: list[int], hfm_label: str) -> int:
    return labels[-1] if hfm_label == "human" else labels[0]


def _find_image(indexes: dict[Path, ImageFolderIndex], folders: list[Path], post_id: str) -> Path | None:
    return next((p for p in (indexes[f].find(post_id) for f in folders) if p is not None), None)
