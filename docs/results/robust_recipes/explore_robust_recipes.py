"""Exploration behind the robust model's recipe (README "Results"): train h by a variant of the robust
recipe, then measure the mixture with the embedded g on the first 500 calibration images: h alone
(clean, PGD-20 l_inf 0.1), and, for h's logits x S (S = 1, 1.5, 2) and alpha = 0.5, 0.55, ..., 1,
clean and MIX PGD-20 accuracy wherever the clean accuracy lies in [0.895, 0.93].

Variants (10 epochs, the robust recipe's optimizer, schedule, flips and PGD-7 l_inf 0.1 otherwise):
    pgd    0: CE(PGD(x))                                     (Madry et al.; the earlier robust model)
    mixce  W: W CE(x) + (1 - W) CE(PGD(x))                    (the shipped recipe uses W = 0.5)
    trades B: CE(x) + B KL(p(x) || p(x'))), x' maximising the KL (Zhang et al. 2019, TRADES)

Not part of the package; uses its library. Run from the repository root after `make build`:
    .venv/bin/python -P docs/results/robust_recipes/explore_robust_recipes.py mixce 0.5 [EPOCHS] [THREADS]
    .venv/bin/python -P docs/results/robust_recipes/explore_robust_recipes.py measure MODEL
The second measures a given h (a model file or default:robust) on the first 1000 calibration images
only, into measured.json: shipped_w0.7.{log,json} are that measurement of the shipped h (clean_weight
0.7, 12 epochs, trained by train-default; measured, as /tmp/robust_w07/robust.pt, before it was
copied into the package), calibration_w0.7_measured_floor/ its calibration on all 2000 calibration
images by `calibrate` as it was before the floor's confidence bound (now --floor-delta 0).
The logs next to this file are the runs of 2026-11-24 by a first version of this script (same
training and measurement, tidied since), 1 thread each, two at once on the 2-core machine, about
200 s per epoch; they were stopped after the calibration split, before the test split.
"""

import json
import os
import sys
import time

import torch
from torch.nn import functional as F

from mix_perception.core import architectures
from mix_perception.core.mixing import MixedClassifier
from mix_perception.core.models import Normalized, load_model
from mix_perception.core.transforms import Transform
from mix_perception.experiments import data, training
from mix_perception.experiments.attacks import PGDConfig, adversarial_inputs, pgd
from mix_perception.experiments.batches import accuracy
from mix_perception.experiments.sweeps import mixed_predictions

EPS, STEPS, STEP = 0.1, 7, 2.5 * 0.1 / 7


def kl_pgd(model, x, p_clean, generator):
    """TRADES' inner maximisation: l_inf PGD on KL(p_clean || p(x')), start x + 0.001 N(0, I)."""
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    for _ in range(STEPS):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.kl_div(F.log_softmax(model(x_adv), 1), p_clean, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + STEP * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    return x_adv.detach()


def loss_of(kind, weight, model, x, y, generator):
    if kind in ("pgd", "mixce"):
        attack = PGDConfig(eps=EPS, steps=STEPS, step_size=STEP)
        adversarial = F.cross_entropy(model(pgd(model, x, y, attack, generator)), y)
        return adversarial if kind == "pgd" else weight * F.cross_entropy(model(x), y) + (1 - weight) * adversarial
    if kind == "trades":
        with torch.no_grad():
            p_clean = F.softmax(model(x), 1)
        x_adv = kl_pgd(model, x, p_clean, generator)
        logits = model(x)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1), reduction="batchmean")
        return F.cross_entropy(logits, y) + weight * kl
    raise ValueError(f"unknown variant {kind!r}")


def train(kind, weight, epochs):
    train_split = data.load_split("train")
    mean, std = training.normalization(train_split.images)
    torch.manual_seed(0)
    model = Normalized(architectures.build(training.ARCH), mean, std)
    generator = torch.Generator().manual_seed(0)
    n = train_split.images.shape[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.05, total_steps=epochs * -(-n // 128), pct_start=0.2
    )
    for epoch in range(epochs):
        start, total = time.time(), 0.0
        for index in torch.randperm(n, generator=generator).split(128):
            x, y = train_split.images[index], train_split.labels[index]
            flip = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = loss_of(kind, weight, model, x, y, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        seconds, load = time.time() - start, os.getloadavg()[0]
        print(f"{kind} {weight:g} epoch {epoch + 1}/{epochs} loss {total / n:.4f} {seconds:.0f}s load {load:.1f}")
    content = training.checkpoint(model.eval(), training.FMNIST_NETWORK, mean, std, (1, 28, 28))
    torch.save(content, f"{kind}_{weight:g}.pt")
    return load_model(f"{kind}_{weight:g}.pt")


def frontier(g, h, split, limit):
    x, y = data.load_data(split, limit)[:2]
    config = PGDConfig("linf", 0.1, 20)
    with torch.no_grad():
        g_log, h_logits = torch.log_softmax(g(x), -1), h(x)
        h_pgd = accuracy(h(adversarial_inputs(h, x, y, config)).argmax(-1) == y)
    rows = []
    for scale in (1.0, 1.5, 2.0):
        h_log = torch.log_softmax(h_logits * scale, -1)
        for alpha in [i / 100 for i in range(50, 101, 5)]:
            clean = accuracy(mixed_predictions(g_log, h_log, alpha) == y)
            if not 0.895 <= clean <= 0.93:
                continue
            mixed = MixedClassifier(g, Transform("logit_scale", scale).apply(h), alpha)
            with torch.no_grad():
                mix = accuracy(mixed(adversarial_inputs(mixed, x, y, config)).argmax(-1) == y)
            rows.append({"scale": scale, "alpha": alpha, "clean": clean, "mix": mix, "ratio": mix / h_pgd})
            print(f"{split} s={scale} a={alpha:.2f} clean {clean:.3f} MIX {mix:.3f} ratio {mix / h_pgd:.3f}")
    h_clean = accuracy(h_logits.argmax(-1) == y)
    print(f"{split}: h clean {h_clean:.3f} pgd {h_pgd:.3f}")
    return {"h_clean": h_clean, "h_pgd": h_pgd, "rows": rows}


if __name__ == "__main__":
    if sys.argv[1] == "measure":  # an h trained elsewhere: `measure MODEL` (first 1000 calibration images)
        torch.set_num_threads(2)
        result = frontier(load_model("default:standard"), load_model(sys.argv[2]), "calibration", 1000)
        with open("measured.json", "w") as file:
            json.dump(result, file, indent=1)
        sys.exit()
    kind, weight = sys.argv[1], float(sys.argv[2])
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    h = train(kind, weight, epochs)
    g = load_model("default:standard")
    result = {"kind": kind, "weight": weight, "epochs": epochs}
    result |= {split: frontier(g, h, split, limit) for split, limit in (("calibration", 500), ("test", 1000))}
    with open(f"{kind}_{weight:g}.json", "w") as file:
        json.dump(result, file, indent=1)
