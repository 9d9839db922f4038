# Issue 14 (2026-12-02): exported and compiled inference graphs against eager, written by a helper of
# this session for docs/BENCHMARKS.md ("Exported and compiled graphs"). Not part of the package; needs
# `pip install onnx` and writes under /tmp/p4 (OUT below).
"""Issue 14 measurement: eager (fp32 / bf16) vs torch.compile vs ONNX Runtime (fp32 / dynamic int8)
for CLARA's two encoders (random-full: CLIP ViT-B/32 + DeBERTa-v3-base, LoRA B ~ N(0, 0.01^2), merged).

Run from the repository root:
    HF_HUB_OFFLINE=1 PYTHONPATH=/work/main python /tmp/p4/measure_export_paths.py [--phase export|measure|all]
Needs `pip install onnx` (legacy exporter, dynamo=False). Writes /tmp/p4/onnx/*.onnx and /tmp/p4/results.json.
One post: batch 1, a 48-token text (fixed length for every path; the ONNX graphs have a dynamic text
axis, torch.compile runs with the default automatic-dynamic setting and sees only length 48),
one 224x224 image. Timings interleaved (one call per path per round, order reversed every other round).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from clara.config import get_preset
from clara.inference import Predictor
from clara.model.clara_model import create_model

OUT = Path("/tmp/p4")
ONNX_DIR = OUT / "onnx"
TEXT_TOKENS = 48
ROUNDS = int(os.environ.get("P4_ROUNDS", "20"))
THREADS = 2
TEXT = ("finally home after a long week , the sun is out and the dog is happy to see me . "
        "coffee on the balcony , music on , nothing to do until monday . life is good today !")

torch.set_num_threads(THREADS)


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def build_predictor(precision: str) -> Predictor:
    """As clara/train/benchmark.py's _predictor: same seed, LoRA B ~ N(0, 0.01^2), then merged (prepare=True)."""
    cfg = get_preset("mvsa_single").override({"model.encoders": "random-full"})
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = create_model(cfg)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.01 * torch.randn(param.shape, generator=generator))
    return Predictor(model, tokenizer, cfg, cfg.labels, device="cpu", precision=precision, prepare=True)


def post_inputs(predictor: Predictor) -> dict[str, torch.Tensor]:
    """pixel_values [1,3,224,224] (a fixed random image through the model's transform), input_ids and
    attention_mask [1, TEXT_TOKENS]."""
    from PIL import Image
    generator = torch.Generator().manual_seed(0)
    pixels = (torch.rand(224, 224, 3, generator=generator) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    enc = predictor.tokenizer(TEXT, truncation=True, max_length=TEXT_TOKENS, padding="max_length",
                              return_tensors="pt")
    assert enc["input_ids"].shape[1] == TEXT_TOKENS, enc["input_ids"].shape
    return {"pixel_values": predictor.image_transform(image).unsqueeze(0), "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"], "image": image}


class VisionOnly(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.vision = model.vision

    def forward(self, pixel_values):
        return self.vision(pixel_values)


class TextOnly(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.text = model.text.get_base_model()  # the merged DebertaV2Model without peft's wrapper

    def forward(self, input_ids, attention_mask):
        return self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class Autocast(nn.Module):
    """Runs `inner` under bf16 autocast (entered inside, so torch.compile traces it)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inner(*args)


# ----------------------------------------------------------------------------- ONNX

def export_onnx(model, inputs) -> dict:
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    ONNX_DIR.mkdir(parents=True, exist_ok=True)
    report = {"onnxruntime": onnxruntime.__version__}
    towers = {
        "vision": (VisionOnly(model).eval(), (inputs["pixel_values"],), ["pixel_values"], {"pixel_values": {0: "batch"}}),
        "text": (TextOnly(model).eval(), (inputs["input_ids"], inputs["attention_mask"]), ["input_ids", "attention_mask"],
                 {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}),
    }
    for name, (module, args, names, axes) in towers.items():
        path = ONNX_DIR / f"{name}_fp32.onnx"
        entry = report[name] = {}
        started = time.perf_counter()
        try:
            with torch.no_grad():
                torch.onnx.export(module, args, str(path), input_names=names, output_names=["tokens"],
                                  dynamic_axes={**axes, "tokens": {0: "batch", 1: "seq"}}, opset_version=17,
                                  dynamo=False, do_constant_folding=True)
            entry["export_s"] = time.perf_counter() - started
            entry["exporter"] = "legacy (dynamo=False), opset 17"
            log(name, "exported in", round(entry["export_s"], 1), "s")
        except Exception as exc:  # record and go on
            entry["export_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            log(name, "EXPORT FAILED", entry["export_error"][:500])
            continue
        qpath = ONNX_DIR / f"{name}_int8.onnx"
        started = time.perf_counter()
        try:
            quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8, per_channel=True)
            entry["quantize_s"] = time.perf_counter() - started
            entry["quantize"] = "quantize_dynamic(QInt8, per_channel=True)"
            log(name, "quantized in", round(entry["quantize_s"], 1), "s")
        except Exception as exc:
            entry["quantize_error"] = f"{type(exc).__name__}: {exc}"[:2000]
            log(name, "QUANTIZE (per channel) FAILED", entry["quantize_error"][:500])
            try:
                quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8, per_channel=False)
                entry["quantize_s"] = time.perf_counter() - started
                entry["quantize"] = "quantize_dynamic(QInt8, per_channel=False)"
            except Exception as exc2:
                entry["quantize_error_per_tensor"] = f"{type(exc2).__name__}: {exc2}"[:2000]
        entry["fp32_mb"] = path.stat().st_size / 2**20 + sum(
            p.stat().st_size for p in ONNX_DIR.glob(f"{name}_fp32.onnx.data")) / 2**20
        if qpath.exists():
            entry["int8_mb"] = qpath.stat().st_size / 2**20
    return report


def ort_session(path: Path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- paths

def machine() -> dict:
    model_name = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    flags = open("/proc/cpuinfo").read()
    return {"cpu": model_name, "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "amx": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", default="all", choices=["export", "measure", "all"])
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    results_path = OUT / os.environ.get("P4_RESULTS", "results.json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = machine()
    log(results["machine"])

    started = time.perf_counter()
    fp32 = build_predictor("fp32")
    log("built merged fp32 in", round(time.perf_counter() - started, 1), "s; path", fp32.path.to_dict())
    inputs = post_inputs(fp32)
    px, ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    m32 = fp32.model
    vision32, text32 = VisionOnly(m32).eval(), TextOnly(m32).eval()
    with torch.inference_mode():
        ref_vision, ref_text = vision32(px), text32(ids, mask)
        ref_probs = m32.decide(ref_vision, ref_text, mask).probs
    log("reference shapes", tuple(ref_vision.shape), tuple(ref_text.shape))

    if args.phase in ("export", "all"):
        results["onnx_export"] = export_onnx(m32, inputs)
        results_path.write_text(json.dumps(results, indent=1))
    if args.phase == "export":
        return

    bf16 = build_predictor("bf16")
    log("built merged bf16; path", bf16.path.to_dict())
    m16 = bf16.model
    vision16, text16 = Autocast(VisionOnly(m16)).eval(), Autocast(TextOnly(m16)).eval()

    def decide_all(model, v, t, autocast: bool):
        # what Predictor._predict_batch runs after the encoders: decide + the two ablations
        with torch.inference_mode(), (torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.no_grad()):
            out = model.decide(v, t, mask)
            model.decide(None, t, mask, ablation="text_only")
            model.decide(v, None, mask, ablation="image_only")
        return out.probs

    # each path: (vision(), text(), total()) -> outputs; total = both encoders + the three decide calls
    paths = {}

    def torch_path(vis, txt, model, autocast, grad_ctx=torch.inference_mode):
        def vision():
            with grad_ctx():
                return vis(px)

        def text():
            with grad_ctx():
                return txt(ids, mask)

        def total():
            v, t = vision(), text()
            return decide_all(model, v, t, autocast)
        return vision, text, total

    paths["eager_fp32"] = torch_path(vision32, text32, m32, False)
    paths["eager_bf16 (default)"] = torch_path(vision16, text16, m16, True)
    compile_info = results.setdefault("compile", {})
    compiled_text = {}
    if not args.no_compile:
        for label, vis, txt, model, ac in (("compile_fp32", vision32, text32, m32, False),
                                           ("compile_bf16", vision16, text16, m16, True)):
            cv, ct = torch.compile(vis), torch.compile(txt)
            compiled_text[label] = ct
            entry = compile_info[label] = {}
            for ctx_name, ctx in (("inference_mode", torch.inference_mode), ("no_grad", torch.no_grad)):
                try:
                    t0 = time.perf_counter()
                    with ctx():
                        cv(px)
                    entry["vision_compile_s"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    with ctx():
                        ct(ids, mask)
                    entry["text_compile_s"] = time.perf_counter() - t0
                    entry["grad_mode"] = ctx_name
                    log(label, entry)
                    paths[label] = torch_path(cv, ct, model, ac, ctx)
                    break
                except Exception as exc:
                    entry[f"error_{ctx_name}"] = f"{type(exc).__name__}: {exc}"[:2000]
                    log(label, "COMPILE FAILED under", ctx_name, entry[f"error_{ctx_name}"][:800])
                    torch._dynamo.reset()
                    cv, ct = torch.compile(vis), torch.compile(txt)
                    compiled_text[label] = ct
            results_path.write_text(json.dumps(results, indent=1))
    # separate process (--no-compile P4_FREEZING=1): dynamo would otherwise reuse compile_bf16's graph
    if os.environ.get("P4_FREEZING", "0") == "1" and args.no_compile:
        # inductor's freezing (weights as constants, prepacked for oneDNN): not a _dynamo setting
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True
        cv = torch.compile(Autocast(VisionOnly(m16)).eval())
        ct = torch.compile(Autocast(TextOnly(m16)).eval())
        entry = compile_info["compile_bf16_freezing"] = {}
        try:
            with torch.inference_mode():
                t0 = time.perf_counter(); cv(px); entry["vision_compile_s"] = time.perf_counter() - t0
                t0 = time.perf_counter(); ct(ids, mask); entry["text_compile_s"] = time.perf_counter() - t0
            paths["compile_bf16_freezing"] = torch_path(cv, ct, m16, True)
            log("compile_bf16_freezing", entry)
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            log("compile_bf16_freezing FAILED", entry["error"][:800])
        inductor_config.freezing = False
        results_path.write_text(json.dumps(results, indent=1))

    for kind in ("fp32", "int8"):
        vpath, tpath = ONNX_DIR / f"vision_{kind}.onnx", ONNX_DIR / f"text_{kind}.onnx"
        if not (vpath.exists() and tpath.exists()):
            log("no ONNX", kind, "graphs; skipped")
            continue
        t0 = time.perf_counter()
        vs, ts = ort_session(vpath), ort_session(tpath)
        results.setdefault("ort_session_s", {})[kind] = time.perf_counter() - t0
        feed_v = {"pixel_values": px.numpy()}
        feed_t = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

        def make(vs=vs, ts=ts, feed_v=feed_v, feed_t=feed_t):
            def vision():
                return vs.run(None, feed_v)[0]

            def text():
                return ts.run(None, feed_t)[0]

            def total():
                return decide_all(m32, torch.from_numpy(vision()), torch.from_numpy(text()), False)
            return vision, text, total
        paths[f"ort_{kind}"] = make()

    # accuracy vs eager fp32; warm-up (2 calls each)
    results["reference_max_abs"] = {"vision_tokens": float(ref_vision.abs().max()),
                                    "text_tokens": float(ref_text.abs().max()), "final_probs": float(ref_probs.max())}
    diffs = results["max_abs_diff_vs_eager_fp32"] = {}
    for name, (vision, text, total) in paths.items():
        for _ in range(2):
            v, t, p = vision(), text(), total()
        diffs[name] = {"vision_tokens": max_diff(v, ref_vision), "text_tokens": max_diff(t, ref_text),
                       "final_probs": max_diff(p, ref_probs)}
        log("diff", name, diffs[name])
    # text length change: ONNX dynamic axis check, and what a recompilation costs
    short = {"input_ids": ids[:, :20].contiguous(), "attention_mask": mask[:, :20].contiguous()}
    with torch.inference_mode():
        ref_short = text32(short["input_ids"], short["attention_mask"])
    other_len = results["other_text_length_20"] = {}
    for kind in ("fp32", "int8"):
        if f"ort_{kind}" in paths:
            out = ort_session(ONNX_DIR / f"text_{kind}.onnx").run(None, {k: v.numpy() for k, v in short.items()})[0]
            other_len[f"ort_{kind}_text_diff"] = max_diff(out, ref_short)
    results_path.write_text(json.dumps(results, indent=1))

    # interleaved timing
    names = list(paths)
    times = {name: {"vision": [], "text": [], "total": []} for name in names}
    results["uptime_before"] = uptime()
    log("timing", ROUNDS, "rounds; load", results["uptime_before"])
    for round_index in range(ROUNDS):
        order = names if round_index % 2 == 0 else list(reversed(names))
        for name in order:
            for key, fn in zip(("vision", "text", "total"), paths[name]):
                t0 = time.perf_counter()
                fn()
                times[name][key].append((time.perf_counter() - t0) * 1000)
    # Predictor.predict itself (preprocessing included) for the two eager references
    predict_ms = {"eager_fp32": [], "eager_bf16 (default)": []}
    for round_index in range(ROUNDS):
        for name, pred in ((("eager_fp32", fp32), ("eager_bf16 (default)", bf16)) if round_index % 2 == 0
                           else (("eager_bf16 (default)", bf16), ("eager_fp32", fp32))):
            t0 = time.perf_counter()
            pred.predict([inputs["image"]], [TEXT])
            predict_ms[name].append((time.perf_counter() - t0) * 1000)
    results["uptime_after"] = uptime()
    log("load after", results["uptime_after"])
    # a new text length on the compiled paths: the recompilation's cost (automatic dynamic shapes)
    for label, mod in compiled_text.items() if not os.environ.get("P4_FREEZING") == "1" else []:
        try:
            with torch.inference_mode():
                t0 = time.perf_counter(); out = mod(short["input_ids"], short["attention_mask"])
                first = time.perf_counter() - t0
                t0 = time.perf_counter(); mod(short["input_ids"], short["attention_mask"])
                second = time.perf_counter() - t0
            other_len[f"{label}_text_first_call_s"] = first
            other_len[f"{label}_text_second_call_s"] = second
            other_len[f"{label}_text_diff"] = max_diff(out, ref_short)
            log("length 20 on", label, first, second)
        except Exception as exc:
            other_len[f"{label}_error"] = f"{type(exc).__name__}: {exc}"[:1000]
    results["timings_ms"] = {name: {key: {"median": statistics.median(v), "best": min(v), "n": len(v)}
                                    for key, v in per.items()} for name, per in times.items()}
    results["predictor_predict_ms"] = {n: {"median": statistics.median(v), "best": min(v)} for n, v in predict_ms.items()}
    results["raw_ms"] = times
    results_path.write_text(json.dumps(results, indent=1))
    print(f"{'path':24s} {'vision med/best':>16s} {'text med/best':>16s} {'total med/best':>16s}")
    for name, per in results["timings_ms"].items():
        print(f"{name:24s} " + " ".join(f"{per[k]['median']:7.1f}/{per[k]['best']:7.1f} " for k in ("vision", "text", "total")))
    print("Predictor.predict", results["predictor_predict_ms"])


if __name__ == "__main__":
    main()
