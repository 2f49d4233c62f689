"""Turning the options of evaluate and calibrate into what the toolkit takes: a device, data sets,
models, smoothing and PGD settings, run settings; CommandError with a one-line reason on bad input.
torch and the toolkit are imported inside the functions, so `--help` stays fast."""

from mix_perception.commands.errors import CommandError


def setup_torch(args):
    """Threads and device; CommandError for a bad device."""
    import torch

    from mix_perception.core.models import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return resolve_device(args.device)
    except ValueError as error:
        raise CommandError(str(error)) from None


def load_one(spec: str, arch, args, device):
    """The model of `spec` (its card's normalization and input shape where the file lacks them, core.cards),
    with its card as `model_card` (None without one) for `check_models`."""
    from mix_perception.core.cards import read_card
    from mix_perception.core.models import ModelLoadError, load_model

    try:
        model = load_model(
            spec,
            arch=arch,
            num_classes=args.num_classes,
            mean=args.mean,
            std=args.std,
            device=device,
            input_channels=args.input_channels,
        )
        model.model_card = read_card(spec)
    except (ModelLoadError, ValueError) as error:
        raise CommandError(str(error)) from None
    return model


def check_card(name: str, card, data) -> None:
    """CommandError when the model's card names another image size (or, but for grey data, channel count) or
    other class names than the data."""
    shape = tuple(data.x.shape[1:])
    if card.input_shape is not None:
        channels_differ = card.input_shape[0] != shape[0] and shape[0] != 1
        if card.input_shape[1:] != shape[1:] or channels_differ:
            raise CommandError(f"{name} model's card {card.path.name} says input {list(card.input_shape)}, "
                               f"the data {data.name} is {list(shape)}")  # fmt: skip
    if card.class_names and data.class_names and list(card.class_names) != list(data.class_names):
        raise CommandError(f"{name} model's card {card.path.name} names classes {card.class_names}, "
                           f"the data {data.name} {list(data.class_names)}")  # fmt: skip


def load_dataset(spec: str, limit, option: str = "--data"):
    from mix_perception.experiments.data import load_data

    try:
        data = load_data(spec, limit)
    except Exception as error:  # ValueError from our checks, DataError / OSError from the split files
        raise CommandError(f"{option} {spec}: {' '.join(str(error).split())}") from None
    if len(data.y) == 0:
        raise CommandError(f"{option} {spec}: no images")
    return data


def check_models(models: dict, data, device) -> int:
    """Each model's card against the data (`check_card`), then one forward of two images through each model:
    logits (2, C) with the same C > max label. Returns C; CommandError naming the model otherwise."""
    import torch

    from mix_perception.core.errors import first_line

    classes = set()
    for name, model in models.items():
        if getattr(model, "model_card", None) is not None:
            check_card(name, model.model_card, data)
        try:
            with torch.no_grad():
                out = model(data.x[:2].to(device))
        except Exception as error:
            shape = tuple(data.x.shape[1:])
            raise CommandError(f"{name} model fails on images of shape {shape}: {first_line(error)}") from None
        if out.dim() != 2 or out.shape[0] != min(2, len(data.x)):
            raise CommandError(f"{name} model returns {tuple(out.shape)}, expected logits (N, classes)")
        classes.add(int(out.shape[1]))
    if len(classes) != 1:
        raise CommandError(f"the models disagree on the number of classes: {sorted(classes)}")
    num_classes = classes.pop()
    if num_classes < 2:
        raise CommandError("the models must have at least 2 classes")
    if int(data.y.max()) >= num_classes or int(data.y.min()) < 0:
        raise CommandError(f"labels range {int(data.y.min())}..{int(data.y.max())} but the models have {num_classes}")
    return num_classes


def robust_spec(args) -> str:
    """--robust, with "default" read as the embedded robust model."""
    from mix_perception.core.models import default_spec

    return default_spec(args.robust, "robust")


def standard_spec(args) -> str:
    """--standard, with "default" read as the embedded standard model."""
    from mix_perception.core.models import default_spec

    return default_spec(args.standard, "standard")


def smoothing_spec(args) -> str:
    """--smoothing-model ("default": the embedded smoothing model); when absent, the embedded smoothing
    model if --robust is embedded, else --robust itself."""
    from mix_perception.core.models import DEFAULT_PREFIX, default_spec

    if args.smoothing_model:
        return default_spec(args.smoothing_model, "smoothing")
    robust = robust_spec(args)
    return f"{DEFAULT_PREFIX}smoothing" if robust.startswith(DEFAULT_PREFIX) else robust


SMOOTHING_OPTIONS = {
    "sigma": "--sigma",
    "n_select": "--n-select",
    "n_estimate": "--n-estimate",
    "delta": "--delta",
    "mode": "--mode",
    "batch_size": "--noise-batch-size",
}


def lipschitz_spec(args) -> str:
    """--lipschitz-model, with "default" read as the embedded Lipschitz model."""
    from mix_perception.core.models import default_spec

    return default_spec(args.lipschitz_model, "lipschitz")


def smoothing_settings(args):
    """SmoothingSettings from the certification options; CommandError naming the bad option."""
    from mix_perception.core.smoothing import SmoothingSettings

    try:
        return SmoothingSettings(
            sigma=args.sigma,
            n_select=args.n_select,
            n_estimate=args.n_estimate,
            delta=0.001 if args.delta is None else args.delta,
            mode=args.mode,
            batch_size=args.noise_batch_size,
        )
    except ValueError as error:
        field, _, reason = str(error).partition(" ")
        raise CommandError(f"{SMOOTHING_OPTIONS.get(field, field)} {reason}") from None


def pgd_config(args):
    from mix_perception.experiments.attacks import PGDConfig

    try:
        return PGDConfig(args.norm, args.eps, args.steps, args.step_size)
    except ValueError as error:
        raise CommandError(str(error)) from None


def run_settings(args, device):
    """RunSettings (batch size, device, seed, progress) from --batch-size, --seed, --quiet and the device."""
    from mix_perception.experiments.batches import RunSettings

    return RunSettings(args.batch_size, device, args.seed, not args.quiet)
