"""Shared test settings: offline, few threads, deterministic."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every subprocess a test starts (scripts, console scripts, workers) imports this tree's clara, not
# whichever checkout an editable install last pointed at.
os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                            *filter(None, [os.environ.get("PYTHONPATH")])])

import torch  # noqa: E402

torch.set_num_threads(1)
