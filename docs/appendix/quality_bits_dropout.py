# Issue 14, sixth session (2026-12-02): does bits_dropout change what is learned? The quality
# recipe's "ours" with every fast path, seeds 1-10, once as it is and once with torch's own dropout
# (clara.train.fast_paths.use_bits_dropout replaced for the second half). Reads /tmp/p14/quality800
# (scripts/make_synthetic.py --format mvsa_single --n 800 --seed 0 --no-quirks).
# python docs/appendix/quality_bits_dropout.py OUTPUT_DIR
import sys

import clara.train.fast_paths as fast_paths
from clara.train.benchmark_quality import compare_quality, format_quality

seeds = range(1, 11)
rows = compare_quality("mvsa_single", "/tmp/p14/quality800", sys.argv[1] + "/bits", epochs=4, seeds=seeds,
                       variants=["ours"])
fast_paths.use_bits_dropout = lambda model: 0
torch_rows = compare_quality("mvsa_single", "/tmp/p14/quality800", sys.argv[1] + "/torch", epochs=4, seeds=seeds,
                             variants=["ours"])
print(format_quality(rows + [{**row, "variant": "ours, torch's dropout"} for row in torch_rows]))
for row in rows + torch_rows:
    print(row["variant"], row["seed"], f"{row['test_f1_weighted']:.3f}")
