"""What a data folder says about itself, as a checkpoint's config.json records it ("data"): the
folder, and whether clara.data.synthetic generated it (its synthetic_meta.json, with the
generator's settings). Read back by clara.catalog, so that a model trained on generated posts is
flagged wherever it is listed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clara.data.synthetic import META_FILENAME


def describe_data_folder(data_dir: str | Path | None) -> dict[str, Any]:
    """{"dir", "synthetic", and for a generated folder "generator"}; synthetic is None when there is no folder."""
    if data_dir is None or str(data_dir) in ("", "none"):
        return {"dir": None, "synthetic": None}
    folder = Path(data_dir).expanduser()
    record: dict[str, Any] = {"dir": str(folder.resolve()), "synthetic": (folder / META_FILENAME).is_file()}
    if record["synthetic"]:
        try:
            generator = json.loads((folder / META_FILENAME).read_text(encoding="utf-8")).get("generator")
        except (OSError, ValueError, AttributeError):
            generator = None  # a damaged meta file still marks the folder as generated
        record["generator"] = generator if isinstance(generator, dict) else None
    return record
