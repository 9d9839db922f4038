"""clara.scoring_jobs without a model: the four input kinds read as the same rows (only those
asked for, in chunks), bad records as that row's error, a job folder's arguments and refusals,
and each way a row can fail counted under its reason."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clara.inputs import BatchImages, InputError
from clara.scoring_jobs import CsvSource, JobError, JobFolder, open_source
from clara.scoring_jobs.job import shard_ranges
from clara.scoring_jobs.rows import decode_row, merged_ranges, plan_batches
from clara.scoring_jobs.sources import HEAD_BYTES, InputRow
from _app_utils import image_bytes, truncated_jpeg_bytes

POSTS = [{"image": f"img/{i}.png", "text": f"post number {i}"} for i in range(7)]


def ids_texts(source, ranges=None):
    return [(row.row, row.id, row.image_ref, row.text) for row in source.rows(ranges or [(0, source.num_rows)])]


def test_csv_jsonl_and_parquet_give_the_same_rows(tmp_path):
    csv_path, jsonl_path, parquet_path = tmp_path / "p.csv", tmp_path / "p.jsonl", tmp_path / "p.parquet"
    csv_path.write_text("image,text\n" + "".join(f"{p['image']},{p['text']}\n" for p in POSTS), encoding="utf-8")
    jsonl_path.write_text("".join(json.dumps(p) + "\n\n" for p in POSTS), encoding="utf-8")  # blank lines: not rows
    pq.write_table(pa.Table.from_pylist(POSTS), parquet_path, row_group_size=3)
    sources = [open_source(path) for path in (csv_path, jsonl_path, parquet_path)]
    assert [s.kind for s in sources] == ["csv", "jsonl", "parquet"] and {s.num_rows for s in sources} == {7}
    # ids without an id column: the CSV line (header = 1), the JSONL record number, the Parquet row
    assert [r[1] for r in ids_texts(sources[0])] == [str(i + 2) for i in range(7)]
    assert [r[1] for r in ids_texts(sources[1])] == [str(i + 1) for i in range(7)]
    assert [r[1] for r in ids_texts(sources[2])] == [str(i) for i in range(7)]
    wanted = [(1, 3), (5, 7)]  # only these rows, across Parquet row groups
    for source in sources:
        assert [(r[0], r[2], r[3]) for r in ids_texts(source, wanted)] == [
            (i, POSTS[i]["image"], POSTS[i]["text"]) for i in (1, 2, 5, 6)]
        assert source.images_folder == tmp_path


def test_csv_dialects_the_app_accepted_still_read(tmp_path):
    data = ("\ufeffID;Image_Path;TEXT;label\n"  # BOM, semicolons, any case
            'p-1;a.png;"two\nlines";positive\n'
            'p-2;b.png;"a ""quoted"" word";\n').encode("utf-8")
    source = CsvSource(data=data)
    first, second = source.rows([(0, 2)])
    assert (first.id, first.image, first.text, first.label) == ("p-1", "a.png", "two\nlines", "positive")
    assert (second.id, second.text, second.label) == ("p-2", 'a "quoted" word', "")
    long_field = CsvSource(data=b'image,text\na.png,"' + b"x" * 200_000 + b'"\n')  # no field-size limit
    assert len(next(long_field.rows([(0, 1)])).text) == 200_000


@pytest.mark.parametrize("data, message", [
    (b"", "The CSV file is empty"),
    (b"image,text\n", "has a header but no rows"),
    (b"name,caption2\na,b\n", r"missing column\(s\) image_path, text: .* found: name, caption2"),
    (b"image,text\n\xff\xfe,x\n", "not UTF-8 text"),
])
def test_unusable_csvs_are_one_message(data, message):
    with pytest.raises(InputError, match=message):
        CsvSource(data=data)


def test_a_bad_record_is_that_rows_error_never_the_end(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"image": "a.png", "text": "ok"}\nnot json\n[1, 2]\n{"IMAGE": "b.png", "Text": 5}\n',
                     encoding="utf-8")
    rows = list(open_source(jsonl).rows([(0, 4)]))
    assert [r.error_kind for r in rows] == [None, "bad record", "bad record", None]
    assert rows[1].error.startswith("line 2 is not JSON") and rows[3].text == "5" and rows[3].image == "b.png"
    # CSV: past the head (whose bytes must be UTF-8) a value that is not UTF-8 is that row's error; a
    # line with the wrong number of fields is left out by the reader and counted
    head = b"".join(b"a.png,%d fine words to fill the head of the file\n" % i for i in range(HEAD_BYTES // 40))
    source = CsvSource(data=b"image,text\n" + head + b"b.png,caf\xe9\nc.png,x,extra\nd.png,last\n")
    rows = list(source.rows([(0, source.num_rows)]))
    assert source.num_rows == len(rows) == HEAD_BYTES // 40 + 2 and [r.image for r in rows[-2:]] == ["b.png", "d.png"]
    assert rows[-2].error_kind == "text unusable" and "not UTF-8" in rows[-2].error and rows[-1].error is None
    assert source.skipped.count == 1 and "3 fields where 2 were expected" in source.skipped.examples[0]
    with pytest.raises(InputError, match=r"missing column\(s\) text"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"image": "a.png"}\n', encoding="utf-8")
        open_source(bad)


def test_parquet_may_hold_the_images_themselves(tmp_path):
    png = image_bytes("PNG")
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": [10, 11], "image": pa.array([png, b"junk"], pa.binary()), "text": ["a", "b"]}), path)
    good, junk = open_source(path).rows([(0, 2)])
    assert (good.id, good.image, good.image_ref) == ("10", png, "")
    images = BatchImages()
    assert decode_row(good, images, allow_empty_text=True).size == (64, 48)
    assert decode_row(junk, images, allow_empty_text=True) is None and junk.error_kind == "not an image"
    struct = tmp_path / "hf.parquet"  # Hugging Face's Image feature: {"bytes", "path"}
    pq.write_table(pa.table({"image": [{"bytes": png, "path": "x.png"}], "text": ["c"]}), struct)
    [row] = open_source(struct).rows([(0, 1)])
    assert row.image == png


def test_a_folder_of_images_with_texts_beside_them(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.jpg", "a.png", "sub/c.PNG", ".hidden/d.png"):
        (tmp_path / name).write_bytes(image_bytes("PNG"))
    (tmp_path / "a.txt").write_text("text of a", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("caf\xe9".encode("cp1252"))  # MVSA's raw texts: not always UTF-8
    (tmp_path / "notes.csv").write_text("x", encoding="utf-8")
    source = open_source(tmp_path)
    assert source.kind == "folder" and source.num_rows == 3
    assert ids_texts(source) == [(0, "a", "a.png", "text of a"), (1, "b", "b.jpg", "café"), (2, "sub/c", "sub/c.PNG", "")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        open_source(tmp_path / "empty")


@pytest.mark.parametrize("row, images, kind", [
    (InputRow(0, "1", "a.png", "   "), None, "empty text"),
    (InputRow(0, "1", "a.png", "x" * 6000), None, "text unusable"),
    (InputRow(0, "1", "", "hi"), None, "no image"),
    (InputRow(0, "1", "missing.png", "hi"), "folder", "image not found"),
    (InputRow(0, "1", "../outside.png", "hi"), "confined", "image unreadable"),
    (InputRow(0, "1", "text.png", "hi"), "folder", "not an image"),
    (InputRow(0, "1", "cut.jpg", "hi"), "folder", "image damaged"),
])
def test_every_way_a_row_fails_has_its_reason(tmp_path, row, images, kind):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "text.png").write_bytes(b"just text")
    (tmp_path / "in" / "cut.jpg").write_bytes(truncated_jpeg_bytes())
    (tmp_path / "outside.png").write_bytes(image_bytes("PNG"))
    found = {None: BatchImages(folder=tmp_path / "in"), "folder": BatchImages(folder=tmp_path / "in", confine=False),
             "confined": BatchImages(folder=tmp_path / "in")}[images]
    assert decode_row(row, found, allow_empty_text=False) is None
    assert row.error_kind == kind and row.error


def test_batches_are_aligned_on_shard_starts():
    shards = [(k, a, b) for k, (a, b) in enumerate(shard_ranges(25, 10))]
    assert shards == [(0, 0, 10), (1, 10, 20), (2, 20, 25)]
    items = plan_batches(shards[::2], batch_size=4)  # process 0 of 2 takes shards 0 and 2
    assert [(i.shard, i.start, i.end) for i in items] == [(0, 0, 4), (0, 4, 8), (0, 8, 10), (2, 20, 24), (2, 24, 25)]
    assert merged_ranges(items) == [(0, 10), (20, 25)]


def test_a_job_folder_refuses_other_arguments_and_foreign_folders(tmp_path):
    folder = JobFolder(tmp_path / "scores")
    arguments = {"input": {"size": 10}, "batch_size": 16}
    manifest = folder.start(arguments, 25, shard_ranges(25, 10), engine="local")
    assert [s["rows"] for s in manifest["shards"]] == [[0, 10], [10, 20], [20, 25]]
    again = folder.start(arguments, 25, shard_ranges(25, 10), engine="local")  # the same job: fine
    assert again["shards"] == manifest["shards"] and again["created"] == manifest["created"]
    with pytest.raises(JobError, match=r"other arguments \(batch_size: 16 there, 32 now\)"):
        folder.start({**arguments, "batch_size": 32}, 25, shard_ranges(25, 10), engine="local")
    with pytest.raises(JobError, match=r"other arguments \(input.size: 10 there, 11 now\)"):
        folder.start({**arguments, "input": {"size": 11}}, 25, shard_ranges(25, 10), engine="local")
    with pytest.raises(JobError, match="holds a local job"):
        folder.start(arguments, 25, [], engine="ray")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(JobError, match="is not empty and holds no _manifest.json"):
        JobFolder(tmp_path / "other").start(arguments, 25, shard_ranges(25, 10), engine="local")
