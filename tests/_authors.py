"""Runs the CLARA authors' own notebook code (../shared/reference/clara-notebooks/) inside tests.

Nothing is copied: each notebook's .py is parsed with `ast`, the top-level statements a test
needs are picked from one cell by the names they define (classes, functions, `CONFIG = ...`,
module-level assignments, calls) and exec'd in a namespace holding what the notebook imports.
`CLIPVisionModel.from_pretrained` / `DebertaV2Model.from_pretrained` are replaced there by
random models built from configs (no hub), so the notebook's model classes, losses, class
weights and samplers run as written. Tests that use it skip when ../shared is absent.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import io
import re
import types
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, DebertaV2Config, DebertaV2Model


REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT.parent / "shared" / "reference" / "clara-notebooks"
NOTEBOOK_FILES = {"mvsa_single": "CLARA_MVSA_Single.py", "mvsa_multiple": "CLARA_MVSA_Multi.py",
                  "hfm": "CLARA_HFM.py"}
DATASETS = tuple(NOTEBOOK_FILES)

requires_notebooks = pytest.mark.skipif(
    not all((NOTEBOOK_DIR / name).is_file() for name in NOTEBOOK_FILES.values()),
    reason=f"the authors' notebooks are not at {NOTEBOOK_DIR} (../shared/reference/clara-notebooks "
           "beside the repository); the fidelity tests run their code")

# Where each notebook defines what the tests run (cell numbers as marked in the .py files).
CONFIG_CELL = {"mvsa_single": 4, "mvsa_multiple": 4, "hfm": 4}
MODEL_CELL = {"mvsa_single": 12, "mvsa_multiple": 10, "hfm": 12}
TRAINER_CELL = {"mvsa_single": 16, "mvsa_multiple": 14, "hfm": 16}
SINGLE_MODEL_NAMES = ("CoAttentionBlock", "CoAttentionStack", "PredictionModule", "VerificationModule",
                      "UncertaintyEstimator", "FeedbackModule", "_collect_linear_leaf_names", "find_targets_for_clip",
                      "find_targets_for_deberta", "_VisionAdapter", "CLARAModel")
MODEL_NAMES = {"mvsa_single": SINGLE_MODEL_NAMES, "hfm": SINGLE_MODEL_NAMES,
               "mvsa_multiple": ("CoAttentionFusion", "CLARAModel")}
# Seeds of the stand-in "pretrained" encoder weights.
VISION_SEED, TEXT_SEED, LORA_B_SEED = 11, 12, 13

# The notebooks' own deprecated torch calls (torch.cuda.amp.*) warn when their code runs here.
AUTHORS_CODE_WARNINGS = [pytest.mark.filterwarnings("ignore:`torch.cuda.amp.:FutureWarning"),
                         pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")]


def runs_authors_code(test: Any) -> Any:
    """Decorator for a test that runs the notebooks' code: skipped without them, their warnings quiet."""
    for mark in (requires_notebooks, *AUTHORS_CODE_WARNINGS):
        test = mark(test)
    return test


_CELL_MARK = re.compile(r"^# ===== CELL (\d+) =====")


def _defined_names(node: ast.stmt) -> set[str]:
    """The names a top-level statement defines (or, for a bare call, the function it calls)."""
    if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name)}
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name):
        return {node.value.func.id}
    return set()


class Notebook:
    """One notebook's code cells, parsed; `run` execs chosen statements of a cell."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.path = NOTEBOOK_DIR / NOTEBOOK_FILES[dataset]
        self.source = self.path.read_text(encoding="utf-8")
        marks = [(number, int(m.group(1))) for number, line in enumerate(self.source.splitlines(), 1)
                 if (m := _CELL_MARK.match(line))]
        self.cells: dict[int, list[ast.stmt]] = {}
        for node in ast.parse(self.source).body:
            cell = max((c for line, c in marks if line <= node.lineno), default=0)
            self.cells.setdefault(cell, []).append(node)

    def statements(self, cell: int, names: Iterable[str]) -> list[ast.stmt]:
        """Cell `cell`'s top-level statements that define (or call) any of `names`, in source order."""
        wanted = set(names)
        chosen = [node for node in self.cells[cell] if _defined_names(node) & wanted]
        missing = wanted - set().union(*(_defined_names(node) for node in chosen))
        if missing:
            raise LookupError(f"{self.path.name} cell {cell} defines none of {sorted(missing)}")
        return chosen

    def exec(self, nodes: list[ast.stmt], namespace: dict[str, Any]) -> dict[str, Any]:
        # Compiled under the notebook's file name, so a traceback points at the authors' line.
        code = compile(ast.Module(body=nodes, type_ignores=[]), str(self.path), "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, namespace)  # noqa: S102 - the point of this module: run the authors' code
        return namespace

    def run(self, cell: int, names: Iterable[str], namespace: dict[str, Any]) -> dict[str, Any]:
        return self.exec(self.statements(cell, names), namespace)

    def namespace(self) -> dict[str, Any]:
        """What the notebook's top-level imports give (an import that fails here, e.g. IPython, is left out)."""
        namespace: dict[str, Any] = {"__name__": f"authors_{self.dataset}"}
        for nodes in self.cells.values():
            for node in nodes:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    with contextlib.suppress(ImportError):
                        self.exec([node], namespace)
        import tqdm
        namespace["tqdm"] = functools.partial(tqdm.tqdm, disable=True)  # no progress bars in test output
        return namespace

    def method(self, class_name: str, method_name: str, cell: int) -> ast.FunctionDef:
        [cls] = [n for n in self.statements(cell, [class_name]) if isinstance(n, ast.ClassDef)]
        return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == method_name)

    def loss_block(self) -> list[ast.stmt]:
        """The statements of `Trainer.train_epoch` that compute the loss (its `with autocast` block)."""
        epoch = self.method("Trainer", "train_epoch", TRAINER_CELL[self.dataset])
        blocks = [n for n in ast.walk(epoch) if isinstance(n, ast.With)
                  and any(isinstance(t, ast.Name) and t.id == "loss" for s in n.body if isinstance(s, ast.Assign)
                          for t in s.targets)]
        if len(blocks) != 1:
            raise LookupError(f"{self.path.name}: expected one `with` block computing `loss` in Trainer.train_epoch")
        return blocks[0].body


@functools.cache
def notebook(dataset: str) -> Notebook:
    return Notebook(dataset)


def printed(dataset: str, pattern: str) -> re.Match:
    """The first match of `pattern` in the notebook's saved cell outputs (`*_outputs.txt`)."""
    path = NOTEBOOK_DIR / NOTEBOOK_FILES[dataset].replace(".py", "_outputs.txt")
    match = re.search(pattern, path.read_text(encoding="utf-8"))
    if match is None:
        raise LookupError(f"{path.name} prints nothing matching {pattern!r}")
    return match


# --------------------------------------------------------------------------- the notebook models

class RandomPretrained:
    """Stands in for CLIPVisionModel / DebertaV2Model: `from_pretrained(hub_id)` builds the class
    from `config` with random weights drawn from `seed` (the global RNG is left as it was)."""

    def __init__(self, model_class: type, config: Any, seed: int):
        self.model_class, self.config, self.seed = model_class, config, seed

    def from_pretrained(self, name_or_path: str, *args: Any, **kwargs: Any) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.model_class(self.config)


def narrow_encoder_configs(vocab_size: int, pad_token_id: int) -> tuple[CLIPVisionConfig, DebertaV2Config]:
    """CLIP-vision and DeBERTa-v3 configs 768 wide, as published (the MVSA-Single and HFM notebooks
    hard-code `vision_dim=768, text_dim=768`), but 2 layers deep over 64 px images: CPU-cheap."""
    from clara.model.encoders import _deberta_v3_config

    vision = CLIPVisionConfig(hidden_size=768, intermediate_size=256, num_hidden_layers=2, num_attention_heads=12,
                              image_size=64, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = _deberta_v3_config(vocab_size, pad_token_id, hidden_size=768, intermediate_size=256,
                              num_hidden_layers=2, num_attention_heads=12, position_buckets=32,
                              max_position_embeddings=128)
    return vision, text


def tiny_encoder_configs(vocab_size: int, pad_token_id: int) -> tuple[CLIPVisionConfig, DebertaV2Config]:
    """Our `tiny` encoders' architectures (64 wide). Only the MVSA-Multiple notebook reads its
    encoder widths from their configs; the other two need `narrow_encoder_configs`."""
    from clara.config import ModelConfig
    from clara.model.encoders import TINY_TEXT_SIZES, _deberta_v3_config, _offline_vision_config

    return (_offline_vision_config(ModelConfig(encoders="tiny")),
            _deberta_v3_config(vocab_size, pad_token_id, **TINY_TEXT_SIZES))


def published_encoder_configs() -> tuple[CLIPVisionConfig, DebertaV2Config]:
    """openai/clip-vit-base-patch32 and microsoft/deberta-v3-base as configs (for parameter counts)."""
    from clara.model.encoders import DEBERTA_V3_VOCAB_SIZE, _deberta_v3_config

    return CLIPVisionConfig(), _deberta_v3_config(DEBERTA_V3_VOCAB_SIZE, 0)


def save_encoders(folder: Path, encoder_configs: tuple[CLIPVisionConfig, DebertaV2Config], tokenizer: Any) -> Path:
    """The stand-in "pretrained" encoders (the weights `from_pretrained` gives the notebook) as
    save_pretrained folders `vision/` and `text/` (with the tokenizer), for our published loader."""
    vision_config, text_config = encoder_configs
    RandomPretrained(CLIPVisionModel, vision_config, VISION_SEED).from_pretrained("").save_pretrained(folder / "vision")
    RandomPretrained(DebertaV2Model, text_config, TEXT_SEED).from_pretrained("").save_pretrained(folder / "text")
    tokenizer.save_pretrained(folder / "text")
    return folder


# Module fixtures of the notebook-import tests (import them by name into a test module): a tiny
# WordPiece tokenizer trained on the module's TEXTS, both encoder sizes' configs, and the narrow
# encoders saved as an --encoders-from folder.

@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, request) -> Path:
    from clara.model.encoders import TINY_TOKENIZER_VOCAB, train_wordpiece_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    train_wordpiece_tokenizer(request.module.TEXTS, TINY_TOKENIZER_VOCAB).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def encoder_configs(tokenizer) -> dict[str, tuple[CLIPVisionConfig, DebertaV2Config]]:
    """"narrow" (768 wide, as the notebooks hard-code) and "tiny" (our tiny encoders) configs."""
    return {"narrow": narrow_encoder_configs(len(tokenizer), tokenizer.pad_token_id),
            "tiny": tiny_encoder_configs(len(tokenizer), tokenizer.pad_token_id)}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, encoder_configs, tokenizer) -> Path:
    """The narrow encoders' "pretrained" weights as an --encoders-from folder (vision/, text/)."""
    return save_encoders(tmp_path_factory.mktemp("encoders"), encoder_configs["narrow"], tokenizer)


@dataclass
class AuthorsModel:
    dataset: str
    model: nn.Module  # the notebook's CLARAModel, in eval mode
    config: dict[str, Any]  # its CONFIG (with the sizes the test chose)
    namespace: dict[str, Any]  # the notebook namespace it was built in

    def outputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """logits, pred_logits, verify_logits, probs (and uncertainty [B] where the notebook has one)."""
        with torch.no_grad():
            if self.dataset == "mvsa_multiple":  # returns (lg_f, lg_p, lg_v); cell 23 takes softmax(lg_f)
                logits, pred, verify = self.model(pixel_values=pixel_values, input_ids=input_ids,
                                                  attention_mask=attention_mask)
                return {"logits": logits, "pred_logits": pred, "verify_logits": verify,
                        "probs": torch.softmax(logits, dim=-1)}
            out = self.model(pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        return {**out, "uncertainty": out["uncertainty"].squeeze(-1)}


def build_authors_model(dataset: str, encoder_configs: tuple[CLIPVisionConfig, DebertaV2Config],
                        config_overrides: Mapping[str, Any] | None = None, seed: int = 0,
                        randomise_lora_b: bool = True) -> AuthorsModel:
    """The notebook's CLARAModel(CONFIG), built by its own code (model cell; for MVSA-Multiple also
    cell 12's encoder freezing), with `from_pretrained` building `encoder_configs` instead.

    `config_overrides` update CONFIG (e.g. a small hidden_dim). LoRA B starts at zero in peft, so
    by default it is drawn at random: a trained checkpoint's adapters change the outputs.
    """
    book = notebook(dataset)
    namespace = book.namespace()
    book.run(CONFIG_CELL[dataset], ["CONFIG"], namespace)
    namespace["CONFIG"].update(config_overrides or {})
    vision_config, text_config = encoder_configs
    namespace["CLIPVisionModel"] = RandomPretrained(CLIPVisionModel, vision_config, VISION_SEED)
    namespace["DebertaV2Model"] = RandomPretrained(DebertaV2Model, text_config, TEXT_SEED)
    namespace["device"] = torch.device("cpu")
    book.run(MODEL_CELL[dataset], MODEL_NAMES[dataset], namespace)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # MVSA-Single asks DeBERTa for gradient checkpointing by its transformers-4 name.
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
        model = namespace["CLARAModel"](namespace["CONFIG"])
    namespace["model"] = model
    if dataset == "mvsa_multiple":  # cell 12: "Freeze encoders (only LoRA trainable)"
        book.run(12, ["set_trainable_except_lora"], namespace)
    if randomise_lora_b:
        generator = torch.Generator().manual_seed(LORA_B_SEED)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return AuthorsModel(dataset, model.eval(), namespace["CONFIG"], namespace)


# The notebooks ran transformers 4.42, whose CLIPVisionModel nested its modules under
# `vision_model.`. MVSA-Single's adapter and MVSA-Multiple's unwrapping stop at CLIPVisionModel;
# HFM's adapter (cell 12) also unwraps `vision_model`, so its keys never had the segment.
TRANSFORMERS4_CLIP_PREFIXES = {"mvsa_single": ("vision.backbone.",), "hfm": (),
                               "mvsa_multiple": ("vision.b.", "vision_core.")}


def transformers4_state_dict(authors: AuthorsModel, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The model's state dict with the key names the notebook's environment (transformers 4.42) wrote.

    `trainable_only`: only the parameters with requires_grad (a shared module listed once).
    """
    model = authors.model
    if trainable_only:
        tensors = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    else:
        tensors = {name: t.clone() for name, t in model.state_dict().items()}
    prefixes = TRANSFORMERS4_CLIP_PREFIXES[authors.dataset]

    def rename(key: str) -> str:
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        return key if prefix is None else prefix + "vision_model." + key[len(prefix):]

    return {rename(k): v for k, v in tensors.items()}


# --------------------------------------------------------------------------- losses, weights, samplers

def train_samples(dataset: str, labels: list[int]) -> list[types.SimpleNamespace]:
    """Stand-ins for the notebook's sample objects: the label attribute its code reads."""
    if dataset == "mvsa_single":
        names = ("positive", "neutral", "negative")
        return [types.SimpleNamespace(label=names[y]) for y in labels]
    if dataset == "mvsa_multiple":
        names = ("positive", "neutral", "negative")
        return [types.SimpleNamespace(combined_majority=names[y]) for y in labels]
    return [types.SimpleNamespace(label=y) for y in labels]  # HFM keeps integer labels


def training_namespace(dataset: str, labels: list[int]) -> dict[str, Any]:
    """A notebook namespace with its CONFIG, `device` (CPU) and `train_samples` carrying `labels`."""
    book = notebook(dataset)
    namespace = {**book.namespace(), "train_samples": train_samples(dataset, labels), "device": torch.device("cpu")}
    return book.run(CONFIG_CELL[dataset], ["CONFIG"], namespace)


def class_weights(dataset: str, labels: list[int]) -> torch.Tensor | None:
    """The class weights the notebook's training uses for these training labels (None: unweighted).

    MVSA-Single: cell 10 counts, cell 14 `cls_weights`; MVSA-Multiple: cell 12 `ce_w`; HFM: the
    Trainer of cell 16 is built without `cls_weights`.
    """
    book = notebook(dataset)
    namespace = training_namespace(dataset, labels)
    if dataset == "mvsa_single":
        book.run(10, ["cnt"], namespace)
        return book.run(14, ["counts", "cls_weights"], namespace)["cls_weights"]
    if dataset == "mvsa_multiple":
        return book.run(12, ["train_labels", "cc", "ce_w"], namespace)["ce_w"]
    return None


def train_sampler(dataset: str, labels: list[int]) -> torch.utils.data.Sampler:
    """The notebook's training sampler over posts with these labels (cell 10; MVSA-Multiple cell 8)."""
    book = notebook(dataset)
    namespace = training_namespace(dataset, labels)
    if dataset == "mvsa_multiple":
        book.run(8, ["build_extreme_negative_sampler"], namespace)
        config = namespace["CONFIG"]
        with contextlib.redirect_stdout(io.StringIO()):
            sampler, use_shuffle = namespace["build_extreme_negative_sampler"](
                namespace["train_samples"], config["negative_class_boost"], config["min_ratio_negative"])
        assert not use_shuffle
        return sampler
    names = ["cnt", "arr", "inv", "weights_per_sample", "train_sampler"]
    return book.run(10, names + (["lab2id"] if dataset == "mvsa_single" else []), namespace)["train_sampler"]


class _FixedOutputs(nn.Module):
    """A stand-in model for the notebook Trainer: returns the given logits as its outputs."""

    def __init__(self, dataset: str, logits: torch.Tensor, pred_logits: torch.Tensor, verify_logits: torch.Tensor):
        super().__init__()
        self.dataset = dataset
        self.logits = nn.Parameter(logits.clone())
        self.pred_logits = nn.Parameter(pred_logits.clone())
        self.verify_logits = nn.Parameter(verify_logits.clone())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.dataset == "mvsa_multiple":
            return self.logits, self.pred_logits, self.verify_logits
        return {"logits": self.logits, "pred_logits": self.pred_logits, "verify_logits": self.verify_logits}


# What each notebook's train_epoch has bound when its loss block starts: pixels, ids, mask, labels.
LOOP_NAMES = {"mvsa_single": ("pv", "ids", "msk", "y"), "hfm": ("pixel_values", "input_ids", "attention", "labels"),
              "mvsa_multiple": ("pv", "ids", "att", "lab")}
# Names of the loss terms in each notebook's `with` block, by our names for them.
LOSS_TERMS = {
    "mvsa_single": {"final": "loss_main", "verify": "loss_ver", "kl": "loss_con", "sym_kl": "loss_ctr"},
    "hfm": {"final": "loss_main", "verify": "loss_ver", "kl": "loss_con", "sym_kl": "loss_ctr"},
    "mvsa_multiple": {"final": "loss_f", "pred": "loss_p", "verify": "loss_v", "consistency": "cons"},
}


def notebook_trainer(dataset: str, labels: torch.Tensor, logits: torch.Tensor, pred_logits: torch.Tensor,
                     verify_logits: torch.Tensor, train_labels: list[int]) -> Any:
    """The notebook's own Trainer (its __init__ as written), over a model returning fixed logits and
    a one-batch loader; class weights / criterion from `train_labels` as the notebook builds them."""
    book = notebook(dataset)
    namespace = training_namespace(dataset, train_labels)
    config = namespace["CONFIG"]
    stub = _FixedOutputs(dataset, logits, pred_logits, verify_logits)
    batch = {"pixel_values": torch.zeros(len(labels), 3, 2, 2), "input_ids": torch.zeros(len(labels), 2).long(),
             "attention_mask": torch.ones(len(labels), 2).long(), "labels": labels}
    with contextlib.redirect_stdout(io.StringIO()):
        if dataset == "mvsa_single":
            book.run(10, ["cnt"], namespace)
            book.run(14, ["EarlyStopping", "counts", "cls_weights"], namespace)
            book.run(16, ["Trainer"], namespace)
            trainer = namespace["Trainer"](stub, [batch], [batch], config, namespace["device"])
        elif dataset == "hfm":
            book.run(14, ["EarlyStopping"], namespace)
            book.run(16, ["Trainer"], namespace)
            # As cell 16 builds it: no cls_weights, use_bf16=True (no GradScaler; bf16 autocast on CUDA only).
            trainer = namespace["Trainer"](model=stub, train_loader=[batch], val_loader=[batch], cfg=config,
                                           device=namespace["device"], use_bf16=True, amp_dtype=torch.bfloat16)
        else:
            book.run(12, ["train_labels", "cc", "ce_w", "ExtremeFocalLoss", "criterion"], namespace)
            book.run(14, ["Trainer"], namespace)
            trainer = namespace["Trainer"](model=stub, train_loader=[batch], val_loader=[batch], config=config,
                                           device=namespace["device"], criterion=namespace["criterion"],
                                           amp_dtype=torch.float32, save_path="unused.pt")
    trainer.namespace = namespace  # the namespace its methods run in (for the loss block)
    return trainer


def notebook_loss_terms(dataset: str, labels: torch.Tensor, logits: torch.Tensor, pred_logits: torch.Tensor,
                        verify_logits: torch.Tensor, train_labels: list[int]) -> dict[str, float]:
    """Each loss term as the notebook's `train_epoch` computes it on this batch (our names as keys)
    and `loss`, the total (MVSA-Multiple: before its division by grad_accum_steps)."""
    book = notebook(dataset)
    trainer = notebook_trainer(dataset, labels, logits, pred_logits, verify_logits, train_labels)
    batch = trainer.tl[0]
    accum = trainer.cfg.get("grad_accum_steps", 1) if dataset == "mvsa_multiple" else 1
    bound = dict(zip(LOOP_NAMES[dataset], (batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                                            labels)))
    local = book.exec(book.loss_block(), {**trainer.namespace, **bound, "self": trainer, "accum": accum})
    terms = {ours: float(local[theirs].detach()) for ours, theirs in LOSS_TERMS[dataset].items()}
    terms["loss"] = float(local["loss"].detach()) * accum
    return terms
