"""The mixer's CPU time per frame without and with the OOD model, and with it but without the frame statistics
(the shift test's second stream): what each part of the OOD work adds, end to end, through ros.inference
FrameClassifier (the node's code). Batch 1, 1 torch thread, the shipped models and OOD model, 300 test frames
three times, the three classifiers alternating frame by frame; time.process_time, so that other jobs' load
on shared cores does not count.

    .venv/bin/python -P docs/results/safety/ood_cost.py
"""

import time

import torch

from mix_perception.core import ood
from mix_perception.core.models import load_model
from mix_perception.experiments import data
from mix_perception.ros.inference import Certification, FrameClassifier
from mix_perception.ros.mixer_runtime import load_ood_model


class WithoutFrameStatistics(ood.OODModel):
    """The OOD model with the frame statistics switched off (their p-value 1, as without a model)."""

    def input_shift_p_values(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], dtype=torch.float64, device=x.device)

    def to(self, device) -> "WithoutFrameStatistics":
        return self


def main() -> None:
    torch.set_num_threads(1)
    g, h = load_model("default:standard"), load_model("default:lipschitz")
    model = load_ood_model("default:ood_lipschitz")
    partial = WithoutFrameStatistics(*(getattr(model, f) for f in model.__dataclass_fields__))
    certification = Certification("lipschitz", 12.0)
    variants = {"no OOD model": None, "OOD model without frame statistics": partial, "OOD model (shipped)": model}
    classifiers = {n: FrameClassifier(g, h, certification, "cpu", (1, 28, 28), ood=m) for n, m in variants.items()}
    frames = data.load_split("test").images[:300]
    seconds = dict.fromkeys(classifiers, 0.0)
    for frame in [*frames[:20], *frames, *frames, *frames]:
        for name, classifier in classifiers.items():
            start = time.process_time()
            classifier.classify(frame[None], 0.65, 0.1)
            seconds[name] += time.process_time() - start
    base = seconds["no OOD model"]
    for name, total in seconds.items():
        print(f"{name:36s} {total / (3 * len(frames) + 20) * 1e3:.3f} ms per frame ({total / base - 1:+.1%})")


if __name__ == "__main__":
    main()
