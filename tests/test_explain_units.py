"""Explanation building blocks that need no trained model: word merging, crop geometry, overlay,
the Chefer et al. relevancy rules and deletion bookkeeping."""
import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import BertTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

from clara.data.images import ImageTransform
from clara.explain import build_word_map, crop_box, overlay
from clara.explain.attributions import text_baseline_ids
from clara.explain.faithfulness import deletion_steps, ranking
from clara.explain.relevancy import (gradient_weighted_attention, normalise_self_relevancy,
                                     propagate_co_attention, propagate_self_attention, pooled_readout)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "love", "the", "rain", "##y", "day", "##s", "!", "sun"]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


def _word_pieces(word_map):
    return [[word_map.tokens[t] for t in word_map.word_tokens(w)] for w in range(word_map.n_words)]


def test_wordpiece_subwords_merge_to_whitespace_words_with_offsets(vocab_file):
    tokenizer = BertTokenizerFast(str(vocab_file))
    text = "I love  rainy days! zebra"
    encoded = tokenizer(text)
    word_map = build_word_map(tokenizer, text, encoded["input_ids"])
    assert word_map.words == ["I", "love", "rainy", "days!", "zebra"]
    assert _word_pieces(word_map) == [["i"], ["love"], ["rain", "##y"], ["day", "##s", "!"], ["[UNK]"]]
    # [CLS] and [SEP] belong to no word; the unknown token is the word "zebra"
    assert word_map.token_to_word[0] == -1 and word_map.token_to_word[-1] == -1
    assert word_map.pool(np.arange(len(word_map.tokens), dtype=float)).tolist() == [1, 2, 3 + 4, 5 + 6 + 7, 8]


def test_slow_tokenizer_falls_back_to_subword_markers_and_drops_padding(vocab_file):
    tokenizer = BertTokenizer(str(vocab_file))
    encoded = tokenizer("the rainy days", padding="max_length", max_length=10)
    word_map = build_word_map(tokenizer, "the rainy days", encoded["input_ids"], encoded["attention_mask"])
    assert word_map.words == ["the", "rainy", "days"]
    assert word_map.token_to_word.tolist() == [-1, 0, 1, 1, 2, 2, -1, -1, -1, -1]


def test_sentencepiece_style_tokenizer_keeps_original_words():
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=["<pad>", "<unk>", "[CLS]", "[SEP]"])
    backend.train_from_iterator(["a sunny day at the park", "the park is sunny today"] * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        cls_token="[CLS]", sep_token="[SEP]")
    text = "Sunny parks today"
    ids = tokenizer(text)["input_ids"]
    word_map = build_word_map(tokenizer, text, ids)
    assert word_map.words == ["Sunny", "parks", "today"]
    # every token is assigned to some word (pieces merged), and the pieces spell the words in order
    assert (word_map.token_to_word >= 0).all()
    assert np.all(np.diff(word_map.token_to_word) >= 0)
    assert len(word_map.tokens) > word_map.n_words


def test_text_baseline_keeps_special_tokens_and_pads_words_including_unknown(vocab_file):
    tokenizer = BertTokenizerFast(str(vocab_file))
    ids = torch.tensor([tokenizer("i love zebra")["input_ids"]])
    assert tokenizer.convert_ids_to_tokens(ids[0]) == ["[CLS]", "i", "love", "[UNK]", "[SEP]"]
    assert text_baseline_ids(tokenizer, ids).tolist() == [[2, 0, 0, 0, 3]]


@pytest.mark.parametrize("size", [(90, 60), (60, 90), (64, 64), (101, 37)])
def test_crop_box_matches_the_real_resize_and_center_crop(size):
    width, height = size
    # pixel value = its column (red) and row (green), so the crop shows where it came from
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    image = Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8))
    crop = ImageTransform(32, mean=[0, 0, 0], std=[1 / 255] * 3)(image)  # values back in 0..255
    x0, y0, x1, y1 = crop_box(image.size, image_size=32)
    assert (x1 - x0, y1 - y0) == (min(size),) * 2
    # without the model's size: the exact central square, within torchvision's 1 px rounding
    assert np.abs(np.subtract(crop_box(image.size), (x0, y0, x1, y1))).max() <= 1
    # the crop's columns/rows run from the box's first to its last original pixel (1 px interpolation slack)
    assert abs(float(crop[0, 16, 0]) - x0) <= 2.5 and abs(float(crop[0, 16, -1]) - (x1 - 1)) <= 2.5
    assert abs(float(crop[1, 0, 16]) - y0) <= 2.5 and abs(float(crop[1, -1, 16]) - (y1 - 1)) <= 2.5


def test_overlay_keeps_original_size_and_leaves_outside_the_crop_untouched():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(60, 90, 3), dtype=np.uint8)  # width 90, height 60
    image = Image.fromarray(pixels)
    drawn = overlay(image, np.ones((4, 4)), alpha=0.6, image_size=32)
    assert drawn.shape == (60, 90, 3) and drawn.dtype == np.uint8
    x0, y0, x1, y1 = crop_box(image.size, image_size=32)
    assert (x0, x1) == (15, 75)
    outside = np.ones((60, 90), dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(drawn[outside], pixels[outside])
    assert (drawn[~outside] != pixels[~outside]).any(axis=-1).mean() > 0.95


def test_overlay_heat_lands_on_the_matching_part_of_the_crop():
    image = Image.new("RGB", (80, 40), (128, 128, 128))
    grid = np.zeros((4, 4))
    grid[0, 3] = 1.0  # top-right patch
    drawn = overlay(image, grid, alpha=1.0, image_size=32, smooth=False).astype(int)
    changed = (drawn != 128).any(axis=-1)
    ys, xs = np.nonzero(changed)
    x0, _, x1, _ = crop_box(image.size, 32)
    assert (xs.min(), xs.max()) == (x1 - 10, x1 - 1) and (ys.min(), ys.max()) == (0, 9)
    # negative evidence gets no heat; an all-negative map leaves the image as it was
    assert np.array_equal(overlay(image, -np.ones((4, 4)), 0.5), np.asarray(image))


def test_gradient_weighted_attention_averages_heads_of_the_positive_part():
    attention = torch.tensor([[[0.5, 0.5]], [[0.2, 0.8]]])  # 2 heads, 1 query, 2 keys
    gradient = torch.tensor([[[1.0, -1.0]], [[2.0, 1.0]]])
    assert torch.allclose(gradient_weighted_attention(attention, gradient), torch.tensor([[0.45, 0.4]]))
    assert gradient_weighted_attention(attention, None).tolist() == [[0.0, 0.0]]


def test_self_relevancy_normalisation_rows_sum_to_one_plus_identity():
    relevancy = torch.tensor([[1.0, 0.0, 0.0], [0.2, 1.6, 0.2], [0.0, 0.0, 3.0]])
    normalised = normalise_self_relevancy(relevancy)
    # row 0: nothing beyond identity stays identity; row 1: 0.2, 0.6, 0.2 then + I; row 2: 2.0 -> 1.0, + I
    assert torch.allclose(normalised, torch.tensor([[1.0, 0.0, 0.0], [0.2, 1.6, 0.2], [0.0, 0.0, 2.0]]))


def test_co_attention_rules_over_two_layers_match_hand_computation():
    generator = torch.Generator().manual_seed(0)
    n_text, n_image, heads = 3, 5, 2
    layers = [(torch.rand(heads, n_text, n_image, generator=generator),
               torch.randn(heads, n_text, n_image, generator=generator),
               torch.rand(heads, n_image, n_text, generator=generator),
               torch.randn(heads, n_image, n_text, generator=generator)) for _ in range(2)]
    maps = propagate_co_attention([l[0] for l in layers], [l[1] for l in layers],
                                  [l[2] for l in layers], [l[3] for l in layers])
    cam = [(gradient_weighted_attention(a, g), gradient_weighted_attention(b, h)) for a, g, b, h in layers]
    (ti1, it1), (ti2, it2) = cam
    # layer 1 from R_tt = I, R_ii = I, R_ti = R_it = 0: R_ti = Ā_ti, R_it = Ā_it, self maps unchanged.
    # layer 2: R̄_tt = R̄_ii = I still (no self relevancy beyond I), so:
    assert torch.allclose(maps["text_image"], ti1 + ti2)
    assert torch.allclose(maps["image_text"], it1 + it2)
    assert torch.allclose(maps["text_text"], torch.eye(n_text) + ti2 @ it1)
    assert torch.allclose(maps["image_image"], torch.eye(n_image) + it2 @ ti1)
    text_scores, image_scores = pooled_readout(maps, torch.tensor([1, 1, 0]))
    expected_text = 0.5 * (ti2 @ it1)[:2].mean(0) + 0.5 * (it1 + it2).mean(0)
    assert torch.allclose(text_scores, expected_text * torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(image_scores, 0.5 * (ti1 + ti2)[:2].mean(0) + 0.5 * (it2 @ ti1).mean(0))


def test_self_attention_rule_over_two_encoder_layers_then_co_attention():
    generator = torch.Generator().manual_seed(1)
    n_text, n_image, heads = 3, 4, 2
    image_layers = [(torch.rand(heads, n_image, n_image, generator=generator),
                     torch.randn(heads, n_image, n_image, generator=generator)) for _ in range(2)]
    r_ii = propagate_self_attention([a for a, _ in image_layers], [g for _, g in image_layers])
    cam1, cam2 = (gradient_weighted_attention(a, g) for a, g in image_layers)
    eye = torch.eye(n_image)
    # R = I; R += Ā1·R; R += Ā2·R  ->  (I + Ā2)(I + Ā1)
    assert torch.allclose(r_ii, (eye + cam2) @ (eye + cam1))
    assert torch.equal(propagate_self_attention([image_layers[0][0]], [None]), eye)  # no gradient, no update
    # the co-attention rules start from the encoders' self-relevancy: R_ti = R̄_tt^T Ā_ti R̄_ii
    a_ti, g_ti = torch.rand(heads, n_text, n_image, generator=generator), torch.randn(heads, n_text, n_image,
                                                                                      generator=generator)
    a_it, g_it = torch.rand(heads, n_image, n_text, generator=generator), torch.randn(heads, n_image, n_text,
                                                                                      generator=generator)
    maps = propagate_co_attention([a_ti], [g_ti], [a_it], [g_it], image_image=r_ii)
    r_ii_bar = normalise_self_relevancy(r_ii)
    assert not torch.allclose(r_ii_bar, eye)
    assert torch.allclose(maps["text_image"], gradient_weighted_attention(a_ti, g_ti) @ r_ii_bar)
    assert torch.allclose(maps["image_text"], r_ii_bar.T @ gradient_weighted_attention(a_it, g_it))
    assert torch.allclose(maps["image_image"], r_ii)  # R_ti was 0 before this layer: rule 11 adds nothing


def test_deletion_steps_and_ranking():
    assert deletion_steps(4).tolist() == [0, 1, 2, 3, 4]
    assert deletion_steps(196, max_points=5).tolist() == [0, 49, 98, 147, 196]
    assert ranking(np.array([[0.1, 0.9], [0.5, 0.9]])).tolist() == [1, 3, 2, 0]


def test_word_embeddings_are_found_through_peft_wrappers():
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionConfig, CLIPVisionModel, DebertaV2Config, DebertaV2Model

    from clara.explain import find_word_embeddings

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            deberta = DebertaV2Model(DebertaV2Config(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32))
            self.text = get_peft_model(deberta, LoraConfig(r=2, target_modules=["query_proj", "value_proj"]))
            self.vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                           num_attention_heads=2, image_size=32, patch_size=8))

    model = Wrapper()
    path, module = find_word_embeddings(model)
    assert path == "text.base_model.model.embeddings.word_embeddings"
    assert module is model.text.get_input_embeddings()
    with pytest.raises(ValueError, match="expected exactly one text word-embedding layer"):
        find_word_embeddings(model.vision)
