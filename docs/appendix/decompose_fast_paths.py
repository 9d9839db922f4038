# Issue 14 (2026-12-02): training-step decomposition for docs/BENCHMARKS.md ("training fast paths"):
# a fixed batch, variants interleaved, forward / backward / optimizer timed apart.
# python docs/appendix/decompose_fast_paths.py BATCH ROUNDS THREADS [VARIANTS] (reads /tmp/p14/mvsa_real,
# made by scripts/make_synthetic.py --format mvsa_single --n 240 --no-quirks --realistic).
"""Interleaved fixed-batch training steps: published vs ours with and without clara.train.fast_paths."""
import sys, time, torch, statistics
from clara.config import get_preset
from clara.data import Collator, load_dataset
from clara.model import create_model
from clara.train.losses import clara_loss
from clara.precision import autocast
from clara.train.fast_paths import _BitsDropoutForward, apply_fast_paths, build_optimizer
B, ROUNDS, THREADS = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
WANT = sys.argv[4].split(",") if len(sys.argv) > 4 else None
torch.set_num_threads(THREADS)
data = load_dataset("mvsa_single", "/tmp/p14/mvsa_real", check_images=False)
texts = [s.text for s in data.splits["train"]]
base = get_preset("mvsa_single").override({"model.encoders": "random-full"})
# name: (pad to 128, gradient checkpointing, precision, fast paths)
variants = {"published": (True, True, "fp32", False), "ours_fp32": (False, False, "fp32", False),
            "ours_fp32_fast": (False, False, "fp32", True), "ours_bf16": (False, False, "bf16", False),
            "ours_bf16_fast": (False, False, "bf16", True), "ours_bf16_fast_torch_dropout": (False, False, "bf16", True),
            "ours_fp32_fast_torch_dropout": (False, False, "fp32", True)}
if WANT: variants = {k: v for k, v in variants.items() if k in WANT}
models, tok = {}, None
for name, (pad, ckpt, prec, fast) in variants.items():
    cfg = base.override({"model.gradient_checkpointing": ckpt})
    torch.manual_seed(0)
    m, tok = create_model(cfg, tokenizer_texts=texts, tokenizer=tok)
    paths = apply_fast_paths(m, prec, "cpu", enabled=fast)
    if name.endswith("_torch_dropout"):  # every fast path but bits_dropout (added 2026-12-02, sixth session)
        for module in m.modules():
            if isinstance(module.__dict__.get("forward"), _BitsDropoutForward):
                del module.forward
    print(name, paths.describe(), flush=True)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = build_optimizer(params, 1e-5, 0.01, paths.fused_optimizer)
    models[name] = (m.train(), cfg, Collator(tok, 128, pad_to_max_length=pad), prec, opt, params)
items = [{"pixel_values": torch.randn(3, 224, 224), "text": t, "label": i % 3, "id": str(i)} for i, t in enumerate(texts[:B])]
times = {n: [] for n in variants}
for r in range(ROUNDS + 1):
    for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
        m, cfg, col, prec, opt, params = models[name]
        b = col(items)
        torch.manual_seed(r)
        t0 = time.perf_counter()
        with autocast(prec, "cpu"):
            out = m(pixel_values=b["pixel_values"], input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            loss, _ = clara_loss(out, b["labels"], None, cfg.train)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if r:
            times[name].append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
        print(r, name, b["input_ids"].shape[1], f"fwd {t1-t0:.2f} bwd {t2-t1:.2f} opt {t3-t2:.2f} total {t3-t0:.2f} loss {loss.item():.4f}", flush=True)
print("median of rounds 1..: forward, backward, optimizer+clip, total (s); total vs published; best")
med = {n: [statistics.median(x[i] for x in v) for i in range(4)] for n, v in times.items()}
ref = med.get("published", [0, 0, 0, 1])[3]
for n, v in med.items():
    print(f"{n:18} " + " ".join(f"{x:.3f}" for x in v) + f"  {ref / v[3]:.2f}x  best {min(x[3] for x in times[n]):.3f}", flush=True)
