"""A batch ZIP whose rows all name one large image stays in bounded memory (issue: 12 rows of one
6000 x 6000 PNG took +1.9 GB, ~80 GB at the row cap, when every row kept its decoded image)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MAX_PEAK_RSS_MB = 1500


def test_twelve_rows_of_one_6000_pixel_png_in_a_zip_stay_under_1_5_gb(tmp_path):
    archive = io.BytesIO()
    picture = io.BytesIO()
    Image.new("RGB", (6000, 6000), (200, 40, 40)).save(picture, "PNG")
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("big.png", picture.getvalue())
    (tmp_path / "posts.zip").write_bytes(archive.getvalue())
    (tmp_path / "posts.csv").write_text("image_path,text\n" + "big.png,a red picture\n" * 12, encoding="utf-8")
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from clara.batch import parse_batch_csv, predict_batch
        from clara.inference import Predictor
        from clara.inputs import BatchImages
        from clara.memory import peak_rss_mb
        folder = Path({str(tmp_path)!r})
        predictor = Predictor.from_checkpoint({str(ROOT / "checkpoints" / "demo")!r}, device="cpu")
        items = parse_batch_csv((folder / "posts.csv").read_bytes())
        rows = predict_batch(predictor, items, BatchImages((folder / "posts.zip").read_bytes(), None), batch_size=4)
        peak_mb = peak_rss_mb()
        print(json.dumps({{"rows": len(rows), "errors": [r["error"] for r in rows if r["error"]], "peak_mb": peak_mb}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows"] == 12 and report["errors"] == []
    assert report["peak_mb"] < MAX_PEAK_RSS_MB, report
