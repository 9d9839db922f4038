"""The model card every checkpoint folder gets at save time (README.md), and Hub upload / download
of a checkpoint folder, offline: huggingface_hub's client is replaced by a local folder standing for
the repository, so what would be sent and what a download keeps are checked without any network."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clara.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from clara.checkpoint.card import CARD_FILE, model_card
from clara.checkpoint.hub import HUB_FILES, download_checkpoint, hub_files, upload_checkpoint
from _eval_utils import build_model, one_thread, tiny_config  # noqa: F401

huggingface_hub = pytest.importorskip("huggingface_hub")
VAL = {"accuracy": 0.5, "f1_weighted": 0.4, "f1_macro": 0.25}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    cfg = tiny_config()
    model, tokenizer = build_model(cfg)
    folder = tmp_path_factory.mktemp("card") / "clara_last"
    return save_checkpoint(folder, model, tokenizer, cfg, metrics={"epoch": 2, "val": VAL},
                           history=[{"epoch": 1}, {"epoch": 2}, {"epoch": 3}], extra={"best_epoch": 2},
                           training_state=({}, {"state_version": 1}))


def test_the_card_says_what_the_checkpoint_is(saved):
    card = (saved / CARD_FILE).read_text(encoding="utf-8")
    info = json.loads((saved / "config.json").read_text())
    assert card.startswith("---\nlibrary_name: clara\n")
    assert "# CLARA on MVSA-Single" in card and "`positive`, `neutral`, `negative`" in card
    assert f"{info['params']['total']:,} in all, {info['params']['trainable']:,} trained" in card
    assert "| val | 50.00 | 40.00 | 25.00 |" in card and "Measured at epoch 2 of 3 trained." in card
    assert "| train.lr_scheduler | linear |" in card and "protocol `clara`" in card
    assert "**Not a real model.**" in card and "`tiny` test encoders" in card  # tiny encoders: no real model
    assert "## Intended use" in card and "Not for decisions about people" in card


def test_the_loader_ignores_the_card(saved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    (copy / CARD_FILE).write_bytes(b"\xff not even text")
    assert load_checkpoint(copy).labels == ["positive", "neutral", "negative"]


def test_a_real_run_has_no_warning_and_a_synthetic_one_says_so(saved):
    info = json.loads((saved / "config.json").read_text())
    info["encoders"]["kind"] = "published"
    info["data"] = {"dir": "/home/someone/private/MVSA_Single", "synthetic": False}
    real = model_card(info)
    assert "Not a real model" not in real and "synthetic" not in real.split("---")[1]
    assert "`MVSA_Single` (real data)" in real and "/home/someone" not in real  # no local paths published
    assert "No metrics stored" in real
    info["data"]["synthetic"] = True
    assert "trained on synthetic posts" in model_card(info)


# ------------------------------------------------------------------------------------- the Hub

class LocalHub:
    """Stands for huggingface_hub's network calls: a repository is a folder under `root`."""

    def __init__(self, root: Path) -> None:
        self.root, self.created = root, []

    def create_repo(self, repo_id, **kwargs):
        self.created.append((repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            target = self.root / repo_id / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            source = op.path_or_fileobj
            target.write_bytes(Path(source).read_bytes() if isinstance(source, str) else source)
        url = f"https://huggingface.co/{repo_id}/commit/{'1' * 40}"
        return huggingface_hub.CommitInfo(commit_url=url, commit_message="", commit_description="", oid="1" * 40)

    def snapshot_download(self, repo_id, local_dir, allow_patterns, **kwargs):
        remote = self.root / repo_id
        names = [p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()]
        for name in huggingface_hub.utils.filter_repo_objects(names, allow_patterns=allow_patterns):
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(remote / name, Path(local_dir) / name)
        return str(local_dir)


@pytest.fixture
def hub(tmp_path, monkeypatch) -> LocalHub:
    local = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", local.create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", local.create_commit)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", local.snapshot_download)
    return local


def test_an_upload_sends_the_checkpoint_and_its_card_only(saved, tmp_path, hub):
    (saved / "results").mkdir(exist_ok=True)
    (saved / "results" / "predictions.csv").write_text("id,text\n1,a test post\n")  # never published
    assert sorted(hub_files(saved)) == ["README.md", "config.json", "history.json", "metrics.json",
                                        "model.safetensors", *sorted(f"tokenizer/{p.name}" for p in
                                                                     (saved / "tokenizer").iterdir())]
    url = upload_checkpoint(saved, "someone/clara-demo")
    assert url == "https://huggingface.co/someone/clara-demo/commit/" + "1" * 40
    assert hub.created == [("someone/clara-demo", {"private": True, "exist_ok": True, "repo_type": "model"})]
    uploaded = tmp_path / "hub" / "someone" / "clara-demo"
    assert not (uploaded / "training_state.safetensors").exists() and not (uploaded / "results").exists()

    fetched = download_checkpoint("someone/clara-demo", tmp_path / "fetched")
    assert (fetched / CARD_FILE).read_text() == (saved / CARD_FILE).read_text()
    assert load_checkpoint(fetched).labels == ["positive", "neutral", "negative"]


def test_an_older_folder_gets_its_card_written_on_upload(saved, tmp_path, hub):
    older = tmp_path / "older"
    shutil.copytree(saved, older)
    (older / CARD_FILE).unlink()
    files = hub_files(older)
    assert isinstance(files[CARD_FILE], bytes) and b"# CLARA on MVSA-Single" in files[CARD_FILE]
    assert not (older / CARD_FILE).exists()  # the user's folder is left as it was
    upload_checkpoint(older, "someone/older")
    assert (tmp_path / "hub" / "someone" / "older" / CARD_FILE).is_file()


def test_a_download_that_is_no_checkpoint_is_refused(tmp_path, hub):
    remote = tmp_path / "hub" / "someone" / "odd"
    remote.mkdir(parents=True)
    (remote / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(CheckpointError):
        download_checkpoint("someone/odd", tmp_path / "odd")
    assert "tokenizer/*" in HUB_FILES and "*.py" not in HUB_FILES
