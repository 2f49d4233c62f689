"""What the OOD work (the OOD score of h's features, g's energy p-value, the frame statistics of the shift test)
adds to the mixer's time per frame, measured two ways:

- the model part alone: ros.inference FrameClassifier.classify (the node's code) without the OOD model and
  with it. Batch 1, 1 torch thread, the shipped models and OOD model, 300 test frames three times, the two
  classifiers alternating frame by frame; time.process_time, so that other jobs' load on shared cores does
  not count.
- `--node ROUNDS`: the whole mixer process, the issue's "mixer's per-frame time": benchmarks/node.py with one
  30 Hz camera for 20 s, the shipped config/mixer.yaml against the same with `ood_model:=""`, alternating, ROUNDS
  times each. Its CPU time per frame classified (from /proc: every thread of the mixer) and the share of frames
  classified, per run and in the mean.

    .venv/bin/python -P docs/results/safety/ood_cost.py [--node 4]
"""

import argparse
import pathlib
import re
import statistics
import subprocess
import sys
import time

import torch

from mix_perception.core.models import load_model
from mix_perception.experiments import data
from mix_perception.ros import parameters
from mix_perception.ros.inference import Certification, FrameClassifier
from mix_perception.ros.mixer_runtime import load_ood_model


def model_part() -> None:
    torch.set_num_threads(1)
    g, h = load_model("default:standard"), load_model("default:lipschitz")
    alpha, scale = parameters.shipped_mixture()
    certification = Certification("lipschitz", scale)
    variants = {"no OOD model": None, "OOD model (shipped)": load_ood_model("default:ood_lipschitz")}
    classifiers = {n: FrameClassifier(g, h, certification, "cpu", (1, 28, 28), ood=m) for n, m in variants.items()}
    frames = data.load_split("test").images[:300]
    seconds = dict.fromkeys(classifiers, 0.0)
    for frame in [*frames[:20], *frames, *frames, *frames]:
        for name, classifier in classifiers.items():
            start = time.process_time()
            classifier.classify(frame[None], alpha, 0.1)
            seconds[name] += time.process_time() - start
    base = seconds["no OOD model"]
    for name, total in seconds.items():
        print(f"{name:36s} {total / (3 * len(frames) + 20) * 1e3:.3f} ms per frame ({total / base - 1:+.1%})")


NODE_BENCHMARK = pathlib.Path(__file__).resolve().parents[3] / "benchmarks" / "node.py"
CPU_LINE = re.compile(r"([\d.]+) ms per frame classified")
CLASSIFIED = re.compile(r"per camera ([\d.]+)-([\d.]+)% classified, all frames' latency p99 ([\d.]+) ms")


def node_run(overrides: list[str]) -> tuple[float, float, float]:
    """(mixer CPU ms per frame classified, % classified, p99 ms) of one benchmarks/node.py run, one camera, 20 s."""
    command = [sys.executable, str(NODE_BENCHMARK), "--cameras", "1", "--seconds", "20"]
    output = subprocess.run(command + [f"-p{o}" for o in overrides], capture_output=True, text=True, check=True).stdout
    classified = CLASSIFIED.search(output)
    return float(CPU_LINE.search(output).group(1)), float(classified.group(1)), float(classified.group(3))


def whole_mixer(rounds: int) -> None:
    variants = {"no OOD model": ['ood_model:=""'], "OOD model (shipped)": []}
    runs = {name: [] for name in variants}
    for round_ in range(rounds):
        for name, overrides in variants.items():
            runs[name].append(node_run(overrides))
            cpu, share, p99 = runs[name][-1]
            print(f"round {round_ + 1} {name:20s} {cpu:.2f} ms per frame, {share:.1f}% classified, p99 {p99:.1f} ms")
    base = statistics.mean(run[0] for run in runs["no OOD model"])
    for name, results in runs.items():
        cpu = [run[0] for run in results]
        mean = statistics.mean(cpu)
        print(f"{name:20s} mean {mean:.2f} ms per frame ({min(cpu):.2f}-{max(cpu):.2f}; {mean / base - 1:+.1%})")
    # the machine drifts between rounds: the difference within each round is the figure, with its standard error
    added = [with_[0] - without[0] for without, with_ in zip(*runs.values(), strict=True)]
    error = statistics.stdev(added) / len(added) ** 0.5 if len(added) > 1 else float("nan")
    print(f"added per frame, paired by round: {statistics.mean(added):.2f} +- {error:.2f} ms (standard error), "
          f"{statistics.mean(added) / base:+.1%} +- {error / base:.1%} of the mixer's time without the OOD model")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", type=int, metavar="ROUNDS", help="measure the whole mixer process instead")
    arguments = parser.parse_args()
    if arguments.node:
        whole_mixer(arguments.node)
    else:
        model_part()
