"""CLARADataset items and the Collator's batches, with a real (tiny, offline) HF tokenizer."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from _data_fixtures import build_mvsa_single_raw, image_bytes
from clara.data import CLARADataset, Collator, ImageError, ImageTransform, load_dataset
from clara.data.types import Sample

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    words = "a good day out with friends i love this look at that so happy".split()
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")


@pytest.fixture(scope="module")
def transform() -> ImageTransform:
    return ImageTransform(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def make_samples(tmp_path: Path, texts: list[str]) -> list[Sample]:
    samples = []
    for i, text in enumerate(texts):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(image_bytes("jpeg"))
        samples.append(Sample(id=str(i), text=text, image_path=path, label=i % 3))
    return samples


def test_dataset_item(tmp_path, transform):
    dataset = CLARADataset(make_samples(tmp_path, ["i love this"]), transform)
    item = dataset[0]
    assert set(item) == {"pixel_values", "text", "label", "id"}
    assert item["pixel_values"].shape == (3, 16, 16) and item["pixel_values"].dtype == torch.float32
    assert (item["text"], item["label"], item["id"]) == ("i love this", 0, "0")
    assert len(dataset) == 1 and dataset.labels == [0]


def test_collator_pads_to_longest_in_batch(tmp_path, tokenizer, transform):
    dataset = CLARADataset(make_samples(tmp_path, ["i love this", "a good day out with friends", "so"]), transform)
    batch = Collator(tokenizer, max_length=128)([dataset[i] for i in range(3)])
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels", "ids"}
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    assert batch["input_ids"].shape == (3, 8)  # 6 words + [CLS] + [SEP], not 128
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 8, 3]
    pad_id = tokenizer.pad_token_id
    assert batch["input_ids"][2, 3:].tolist() == [pad_id] * 5
    assert batch["labels"].tolist() == [0, 1, 2] and batch["labels"].dtype == torch.long
    assert batch["ids"] == ["0", "1", "2"]


def test_collator_truncates_and_pads_to_max_length(tmp_path, tokenizer, transform):
    items = [CLARADataset(make_samples(tmp_path, ["a good day out with friends", "so"]), transform)[i]
             for i in range(2)]
    truncated = Collator(tokenizer, max_length=4)(items)
    assert truncated["input_ids"].shape == (2, 4)
    assert truncated["input_ids"][0].tolist()[-1] == tokenizer.sep_token_id  # [SEP] kept
    padded = Collator(tokenizer, max_length=12, pad_to_max_length=True)(items)
    assert padded["input_ids"].shape == (2, 12)
    assert padded["attention_mask"].sum().item() == 8 + 3


def test_collator_without_labels(tokenizer):
    items = [{"pixel_values": torch.zeros(3, 4, 4), "text": "so happy", "label": None, "id": "x"}]
    batch = Collator(tokenizer)(items)
    assert "labels" not in batch and batch["input_ids"].shape == (1, 4)


def test_dataloader_over_a_loaded_dataset(tmp_path, tokenizer, transform):
    loaded = load_dataset("mvsa_single", build_mvsa_single_raw(tmp_path))
    loader = DataLoader(CLARADataset(loaded.splits["train"], transform), batch_size=5,
                        collate_fn=Collator(tokenizer))
    batches = list(loader)
    assert [b["pixel_values"].shape[0] for b in batches] == [5, 5, 3]  # 13 train posts (test_data_mvsa)
    assert sum(len(b["ids"]) for b in batches) == 13


def test_unreadable_image_raises_naming_the_file(tmp_path, transform):
    path = tmp_path / "bad.jpg"
    path.write_bytes(image_bytes("truncated"))
    dataset = CLARADataset([Sample(id="1", text="x", image_path=path, label=0)], transform)
    with pytest.raises(ImageError, match=f"cannot use image {path}"):
        dataset[0]
