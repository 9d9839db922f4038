"""The bundled examples gallery: examples/examples.json lists each post's image, text, note and
true label; the Predict page offers them, the explanation pages and the Batch page reuse them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXAMPLES_FILE = "examples.json"


@dataclass
class Example:
    name: str
    image_path: Path
    text: str  # the post text
    note: str = ""  # what the example shows (e.g. its true label)
    label: str | None = None


def load_examples(examples_dir: str | Path) -> list[Example]:
    """The gallery's entries whose image is there; `examples.json` lists {name, image, text, note, label}."""
    examples_dir = Path(examples_dir)
    try:
        listing = json.loads((examples_dir / EXAMPLES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(listing, list):
        return []
    examples = []
    for entry in listing:
        if not isinstance(entry, dict) or "image" not in entry:
            continue
        path = examples_dir / Path(str(entry["image"])).name  # never outside the examples folder
        if path.is_file():
            examples.append(Example(name=str(entry.get("name", path.stem)), image_path=path,
                                    text=str(entry.get("text", "")), note=str(entry.get("note", "")),
                                    label=entry.get("label")))
    return examples


def batch_rows(examples: list[Example]) -> list[dict[str, Any]]:
    """The examples as batch CSV rows (clara.batch's dialect), images named relative to the examples folder."""
    return [{"id": e.name, "text": e.text, "image_path": e.image_path.name, "label": e.label} for e in examples]
