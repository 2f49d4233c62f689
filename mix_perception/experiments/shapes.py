"""A small synthetic RGB data set for tests and demos: coloured shapes on a dark, noisy background.

Classes (SHAPES): circle, square, triangle, cross; the class is the shape, not its colour. Each image
(default 3 x 32 x 32) holds one shape of a random colour (each channel uniform in [100, 255]), size
(40-70% of the image side) and position, on a background of uniform noise in [0, 40]. Drawn with
Pillow from a numpy Generator seeded with `seed`: the same seed gives the same bytes. Written as an
image folder (`write_folder`: one subfolder per class, PNG) or an .npz (`write_npz`: images uint8
(N, H, W, 3), labels int64, class_names), the two layouts `mix-perception train --data` reads:

    python -m mix_perception.experiments.shapes OUT [--per-class N] [--size S] [--seed K]

writes OUT as an image folder (or an .npz when OUT ends in .npz).
"""

from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")


def _draw(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size x size x 3 uint8 image of a shape of `kind`."""
    from PIL import Image, ImageDraw

    background = rng.integers(0, 41, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background, "RGB")
    colour = tuple(int(c) for c in rng.integers(100, 256, 3))
    side = int(rng.integers(int(0.4 * size), int(0.7 * size) + 1))
    left, top = (int(v) for v in rng.integers(0, size - side + 1, 2))
    right, bottom = left + side - 1, top + side - 1
    draw = ImageDraw.Draw(image)
    if kind == "circle":
        draw.ellipse((left, top, right, bottom), fill=colour)
    elif kind == "square":
        draw.rectangle((left, top, right, bottom), fill=colour)
    elif kind == "triangle":
        draw.polygon(((left + side // 2, top), (left, bottom), (right, bottom)), fill=colour)
    else:
        bar = max(side // 4, 2)
        middle_x, middle_y = left + side // 2, top + side // 2
        draw.rectangle((middle_x - bar // 2, top, middle_x + bar // 2, bottom), fill=colour)
        draw.rectangle((left, middle_y - bar // 2, right, middle_y + bar // 2), fill=colour)
    return np.asarray(image, dtype=np.uint8)


def make(per_class: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, size, size, 3) uint8, labels (N,) int64), N = per_class * len(SHAPES), classes interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(SHAPES), dtype=np.int64), per_class)
    images = np.stack([_draw(SHAPES[label], size, rng) for label in labels])
    return images, labels


def write_folder(root, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """The data set of `make` as root/<shape>/<index>.png; returns root."""
    from PIL import Image

    root = Path(root)
    images, labels = make(per_class, size, seed)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / SHAPES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "RGB").save(folder / f"{index:05d}.png")
    return root


def write_npz(path, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """The data set of `make` as an .npz with images, labels, class_names; returns path."""
    images, labels = make(per_class, size, seed)
    np.savez(path, images=images, labels=labels, class_names=np.array(SHAPES))
    return Path(path)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="write the coloured-shapes data set")
    parser.add_argument("out", type=Path, help="image folder to write, or a path ending in .npz")
    parser.add_argument("--per-class", type=int, default=300, help="images per class (default 300)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    write = write_npz if args.out.suffix == ".npz" else write_folder
    print(write(args.out, args.per_class, args.size, args.seed))


if __name__ == "__main__":
    main()
