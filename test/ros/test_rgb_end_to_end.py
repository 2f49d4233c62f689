"""RGB end to end (issue 19, points 2-5): coloured shapes made here, g (plain torch, normalized by its card) and
h (deel-torchlip, exported with vanilla_export(), saved with its card) trained here, the held-out images
written as an ImageFolder of 64 x 64 PNGs (and enlarged to 640 x 480), replayed by the real demo camera as bgr8
into the real mixer (which resizes them to the cards' 3 x 32 x 32 and reads the class names from them), in
separate processes over DDS, with an OOD model of h's features. The class is the colour, so a frame whose channel
order were lost would be misclassified. A 640 x 480 bgr8 frame (921 KB) is larger than Fast DDS's default
shared-memory segment: without the node executables' large-frame profile (ros.executables) about 1% of them
arrive best effort (docs/results/README.md); here every one of the 60 must."""

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from rclpy.qos import QoSProfile, ReliabilityPolicy
from torch import nn

from mix_perception.core import cards
from mix_perception.msg import GroundTruth, MixedClassification

pytestmark = pytest.mark.slow  # training, and nodes in separate processes over DDS

COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}
CLASSES = sorted(COLOURS)  # the ImageFolder order, which the demo camera uses for its ground truth
RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
FRAME_SIZES = ((64, 64), (640, 480))  # (width, height) of the replayed frames


def frames_folder(size) -> str:
    return f"frames_{size[0]}x{size[1]}"


def coloured_shapes(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, size, size, 3) uint8, labels (n,)): a disc or a square of the class's colour (jittered), at a
    random place and size, on dark noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, size, size, 3)).astype(np.int16)
    labels = rng.integers(0, len(CLASSES), n)
    yy, xx = np.mgrid[:size, :size]
    for image, label in zip(images, labels, strict=True):
        colour = np.array(COLOURS[CLASSES[label]]) + rng.integers(-30, 31, 3)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = int(rng.integers(size // 8, size // 4))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[disc if rng.random() < 0.5 else (abs(yy - cy) <= r) & (abs(xx - cx) <= r)] = colour
    return np.clip(images, 0, 255).astype(np.uint8), labels


def model_input(images: np.ndarray) -> torch.Tensor:
    """What the mixer makes of a 64 x 64 frame: [0, 1] pixels resized (antialiased bilinear) to 32 x 32."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)


def fit(model: nn.Module, loss, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(50):
            optimizer.zero_grad()
            loss(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def save_ood_model(folder, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    """folder/ood.pt: the statistics of the saved h's features on the training images (core.ood), its
    references on 100 more images (h's scores, g's
    energies, the frame statistics' distances), as `calibrate --goal risk` writes them."""
    from mix_perception.core import models, ood

    g, h = models.load_model(folder / "g.pt"), models.load_model(folder / "h.pt")
    reference = model_input(coloured_shapes(100, 64, seed)[0])
    from mix_perception.core.frame_statistics import frame_statistics

    with torch.no_grad():
        fitted = ood.fit_mahalanobis(ood.penultimate_features(h, x)[0], y)
        scores = fitted.score(ood.penultimate_features(h, reference)[0])
        frames = ood.fit_input_statistics(frame_statistics(x))
        references = ood.energy(g(reference)), frames, frames.score(frame_statistics(reference))
        ood.OODModel.create(fitted, scores, *references).save(folder / "ood.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Paths of g and h (with their cards) and of the held-out ImageFolder."""
    torchlip = pytest.importorskip("deel.torchlip")
    folder = tmp_path_factory.mktemp("rgb")
    torch.manual_seed(0)
    images, labels = coloured_shapes(300, 64, seed=0)
    x, y = model_input(images), torch.from_numpy(labels)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    g = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(8 * 8 * 8, 3))
    fit(g, nn.CrossEntropyLoss(), (x - 0.5) / 0.25, y, epochs=5, lr=3e-3)
    h = torchlip.Sequential(
        torchlip.SpectralConv2d(3, 8, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(4),
        nn.Flatten(),
        torchlip.SpectralLinear(8 * 8 * 8, 32),
        torchlip.GroupSort2(),
        torchlip.FrobeniusLinear(32, 3),
    )
    fit(h, torchlip.TauCrossEntropyLoss(tau=5.0), x, y, epochs=4, lr=1e-2)
    cards.save_model(g, folder / "g.pt", (3, 32, 32), CLASSES, mean=mean, std=std)
    cards.save_model(h.vanilla_export(), folder / "h.pt", (3, 32, 32), CLASSES)
    save_ood_model(folder, x, y, seed=2)
    held_out, truth = coloured_shapes(60, 64, seed=1)
    for index, (image, label) in enumerate(zip(held_out, truth, strict=True)):
        for size in FRAME_SIZES:
            frame = PILImage.fromarray(image, mode="RGB").resize(size, PILImage.NEAREST)
            (folder / frames_folder(size) / CLASSES[label]).mkdir(parents=True, exist_ok=True)
            frame.save(folder / frames_folder(size) / CLASSES[label] / f"{index:03d}.png")
    return folder


@pytest.mark.parametrize("size", FRAME_SIZES, ids=frames_folder)
def test_a_bgr8_camera_replaying_an_image_folder_is_classified_by_an_rgb_pair_read_from_its_cards(
    trained, start_node, ros, spin, size
):
    mixer = start_node(
        "mixer_node",
        {
            "standard_model": str(trained / "g.pt"),
            "robust_model": str(trained / "h.pt"),
            "certification": "lipschitz",
            "alpha": 0.75,
            "robust_logit_scale": 4.0,
            "device": "cpu",
            "ood_model": str(trained / "ood.pt"),
        },
        namespace=(namespace := f"/rgb_{size[0]}"),
    )
    _, node, executor = ros
    results, truths = {}, {}
    stamp = lambda header: (header.stamp.sec, header.stamp.nanosec)  # noqa: E731
    for kind, topic, received in (
        (MixedClassification, f"{namespace}/mixer/classification", results),
        (GroundTruth, f"{namespace}/demo_camera/ground_truth", truths),  # one per frame published
    ):
        keep = lambda m, received=received: received.setdefault(stamp(m.header), m)  # noqa: E731
        node.create_subscription(kind, topic, keep, RELIABLE)
    configured = lambda: node.count_publishers(f"{namespace}/mixer/classification") >= 1 or not mixer.alive()  # noqa: E731
    spin(executor, configured, 120.0, "the RGB mixer")
    assert mixer.alive(), mixer.output()
    replay = {"source": str(trained / frames_folder(size)), "encoding": "bgr8", "rate": 20.0}
    camera = start_node("demo_camera", replay, namespace=namespace)
    matched = lambda: [(results[k], truths[k]) for k in results.keys() & truths.keys()]  # noqa: E731
    spin(executor, lambda: len(matched()) >= 60 or not (mixer.alive() and camera.alive()), 120.0, "60 frames")
    assert mixer.alive() and camera.alive(), mixer.output() + camera.output()
    pairs = matched()
    published = [key for key in truths if min(results) <= key <= max(results)]  # once discovery is done
    assert len(pairs) >= 0.9 * len(published), f"{len(pairs)} of {len(published)} frames published were classified"
    correct = [result for result, truth in pairs if result.class_id == truth.label_id]
    certified = [result for result in correct if result.certified]
    print(f"RGB pair, {frames_folder(size)}: {len(correct)}/{len(pairs)} correct, {len(certified)} certified")
    assert len(correct) >= 0.9 * len(pairs)
    assert certified and all(r.certificate == MixedClassification.CERTIFICATE_LIPSCHITZ for r in certified)
    assert all(result.label == CLASSES[result.class_id] for result in correct)  # the names of h's card
    assert {len(result.probabilities) for result, _ in pairs} == {3}
    # h's features of the RGB frames through the OOD model: in distribution, so few small p-values
    p_values = np.array([result.ood_p_value for result, _ in pairs])
    assert np.all((p_values > 0) & (p_values <= 1)) and np.mean(p_values <= 0.05) <= 0.2, p_values
    assert len(set(p_values.tolist())) > 10 and all(result.ood_score > 0 for result, _ in pairs)  # really scored
    print(f"OOD p-values: median {np.median(p_values):.2f}, {np.mean(p_values <= 0.05):.0%} at or below 0.05")
