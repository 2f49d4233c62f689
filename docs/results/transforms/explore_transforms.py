"""Exploration behind README "Results": for each transform of h's logits, the largest alpha whose
clean accuracy on the first 500 calibration images is >= TARGET (default 0.905), and the accuracy of
that mixture under MIX PGD-20 (l_inf 0.1) on the same images. Not part of the package; uses its
library. Run: .venv/bin/python docs/results/transforms/explore_transforms.py [TARGET] [OUT.json]
(the numbers in explore_transforms.json were produced with byte-identical copies of the embedded
default models, sha256-checked, before they were committed).
"""

import itertools
import json
import sys
import time

import torch

from mix_perception.core import calibration, evaluation
from mix_perception.core.mixing import MixedClassifier
from mix_perception.core.models import load_model

torch.set_num_threads(2)
target = float(sys.argv[1]) if len(sys.argv) > 1 else 0.905
out = sys.argv[2] if len(sys.argv) > 2 else "explore_transforms.json"
g, h = load_model("default:standard"), load_model("default:robust")
data = evaluation.load_data("calibration", 500)
x, y = data.x, data.y
config = evaluation.PGDConfig("linf", 0.1, 20)
with torch.no_grad():
    g_log, h_logits = torch.log_softmax(g(x), -1), h(x)
alphas = [i / 100 for i in range(30, 101)]
transforms = [calibration.Transform("temperature", s) for s in (1, 2, 3)]
for c, p, k in itertools.product((0.0, 0.5, 1.0), (1, 2, 4), (10, 20, 40)):  # top value of s * relu(LN + c)^p ~ k
    transforms.append(calibration.Transform("mixednuts", round(k / (3 + c) ** p, 4), p, c))
rows = []
for t in transforms:
    with torch.no_grad():
        h_log = torch.log_softmax(t.apply(torch.nn.Identity())(h_logits), -1)
    ok = [a for a in alphas if evaluation.accuracy(evaluation.mixed_predictions(g_log, h_log, a) == y) >= target]
    if not ok:
        print(t.describe(), "never reaches", target, flush=True)
        continue
    a = max(ok)
    clean = evaluation.accuracy(evaluation.mixed_predictions(g_log, h_log, a) == y)
    mixed = MixedClassifier(g, t.apply(h), a)
    start = time.time()
    x_adv = evaluation.attack(mixed, x, y, config, batch_size=500)
    with torch.no_grad():
        robust = evaluation.accuracy(mixed(x_adv).argmax(-1) == y)
    rows.append((t.describe(), a, clean, robust))
    seconds = time.time() - start
    print(f"{t.describe():55s} alpha {a:.2f} clean {clean:.3f} MIX {robust:.3f} ({seconds:.0f}s)", flush=True)
json.dump(rows, open(out, "w"), indent=1)
