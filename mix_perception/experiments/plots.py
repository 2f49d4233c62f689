"""PNG plots of evaluation results (matplotlib, Agg backend: no display needed).

Each function takes the JSON-ready results dict of `mix-perception evaluate` (docs/evaluation.md: results.json
schema) and writes one PNG; it returns the path, or None when the results hold nothing to plot.
"""

from pathlib import Path

ATTACK_STYLES = {
    "std": ("STD (PGD on g)", ":"),
    "rob": ("ROB (PGD on h)", "-."),
    "mix": ("MIX (adaptive PGD on mixture)", "--"),
    "worst": ("worst of the attacks", "-"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _attack_label(results: dict) -> str:
    cfg = results.get("config", {}).get("attack", {})
    if not cfg:
        return ""
    return f" ({cfg.get('norm')} eps={cfg.get('eps')}, PGD-{cfg.get('steps')})"


def accuracy_vs_alpha(results: dict, path: Path) -> Path | None:
    """Clean and attacked accuracy of the mixture against alpha (the paper's Figure 2)."""
    rows = results.get("per_alpha") or []
    if not rows:
        return None
    plt = _pyplot()
    alphas = [r["alpha"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(alphas, [r["clean_accuracy"] for r in rows], "o-", color="black", label="clean")
    for name, (label, style) in ATTACK_STYLES.items():
        if name in rows[0].get("attacks", {}):
            ax.plot(alphas, [r["attacks"][name]["accuracy"] for r in rows], "o" + style, label=label)
    auto = [(r["alpha"], r["autoattack_accuracy"]) for r in rows if "autoattack_accuracy" in r]
    if auto:
        ax.plot(*zip(*auto, strict=True), "s", color="red", label="AutoAttack on mixture")
    ax.set_xlabel("alpha (weight of the robust model h)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title("Mixed classifier accuracy vs alpha" + _attack_label(results), fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path, plt)


def tradeoff(results: dict, path: Path, attack: str = "mix") -> Path | None:
    """Clean accuracy (x) against attacked accuracy (y) over alpha, with g and h alone as points."""
    rows = [r for r in results.get("per_alpha") or [] if attack in r.get("attacks", {})]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    clean = [r["clean_accuracy"] for r in rows]
    attacked = [r["attacks"][attack]["accuracy"] for r in rows]
    ax.plot(clean, attacked, "o-", label=f"mixture, {ATTACK_STYLES[attack][0]}")
    for r, cx, cy in zip(rows, clean, attacked, strict=True):
        ax.annotate(f"{r['alpha']:g}", (cx, cy), textcoords="offset points", xytext=(3, 3), fontsize=7)
    models = results.get("models", {})
    for name, marker in (("standard", "s"), ("robust", "D")):
        if name in models:
            m = models[name]
            ax.plot(m["clean_accuracy"], m["pgd_accuracy"], marker, markersize=8, label=f"{name} alone (PGD on itself)")
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel("attacked accuracy" + _attack_label(results))
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy-robustness trade-off (labels: alpha)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def certified_accuracy(cert: dict, path: Path) -> Path | None:
    """Certified accuracy against l2 radius for one method (an entry of results["certified"]): the
    mixture per alpha > 1/2 (and logit scale, for a Lipschitz h), and h alone — for the smoothing,
    at the matched clean accuracy (the paper's Figure 3)."""
    if not cert:
        return None
    mixtures = [m for m in cert["mixture"] if m["alpha"] > 0.5]
    if not mixtures:
        return None
    plt = _pyplot()
    radii = cert["radii"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m in mixtures:
        scale = f", S={m['logit_scale']:g}" if "logit_scale" in m else ""
        label = f"mixture alpha={m['alpha']:g}{scale} (clean {m['clean_accuracy']:.3f})"
        ax.plot(radii, m["curve"], "-", label=label)
    if "sigma" in cert:
        alone = {m["matched_robust"]["sigma"]: m["matched_robust"] for m in mixtures}
        alone = [(f"h alone, sigma'={sigma:g}", robust) for sigma, robust in sorted(alone.items(), reverse=True)]
        details = f"sigma={cert['sigma']:g}, delta={cert['delta']:g}, n={cert['n_estimate']}"
    else:
        alone = [("h alone", robust) for robust in cert["robust_alone"]]
        details = f"deterministic, proven l2 constant {cert['lipschitz_constant']:.4g}"
    for index, (name, robust) in enumerate(alone):
        label = f"{name} (clean {robust['clean_accuracy']:.3f})"
        ax.plot(radii, robust["curve"], ("--", ":", "-.")[index % 3], color="black", label=label)
    ax.set_xlabel("l2 radius (pixels in [0, 1])")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"Certified accuracy ({cert['method']}, {details}, {cert['images']} images)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path, plt)


def calibration_candidates(calibration: dict, path: Path) -> Path | None:
    """Clean (x) against robust (y) accuracy of every attacked calibration candidate, a bar down to its
    lower confidence bound (robust_lower, the number held against the floor), the floor as a line, the
    chosen one starred. Labels: alpha, then the transform of h (logit scale S, or S/P/C for MixedNUTS)."""
    points = [c for c in calibration.get("candidates", []) if c.get("robust_accuracy") is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 5.0))
    for c in points:
        marker, color = ("o", "tab:blue") if c["feasible"] else ("x", "tab:red")
        ax.plot(c["clean_accuracy"], c["robust_accuracy"], marker, color=color)
        if c.get("robust_lower") is not None:
            ax.vlines(c["clean_accuracy"], c["robust_lower"], c["robust_accuracy"], color=color, alpha=0.4)
        t = c["transform"]
        sharpening = (
            f"S={t['scale']:g}"
            if t["kind"] == "logit_scale"
            else f"S={t['scale']:g},P={t['power']:g},C={t['offset']:g}"
        )
        ax.annotate(
            f"{c['alpha']:g} {sharpening}",
            (c["clean_accuracy"], c["robust_accuracy"]),
            xytext=(3, 3),
            textcoords="offset points",
            fontsize=6,
        )
    chosen = calibration.get("chosen")
    if chosen:
        ax.plot(chosen["clean_accuracy"], chosen["robust_accuracy"], "*", markersize=16, color="gold", label="chosen")
    ax.axhline(calibration["floor"], color="gray", linestyle="--", label=f"floor {calibration['floor']:.3f}")
    ax.set_xlabel("clean accuracy (calibration split)")
    ax.set_ylabel("robust accuracy (calibration split)")
    ax.margins(x=0.15, y=0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        "Calibration candidates attacked (label: alpha, sharpening)\n"
        "bar: down to the lower confidence bound held against the floor; x: bound below the floor",
        fontsize=8,
    )
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def risk_coverage(curves: dict, verdict, path: Path) -> Path | None:
    """Risk among accepted frames against coverage, accepting by the verdict's acceptance score (certified
    frames only), one curve per labelled frame set; the calibrated threshold's epsilon as a line.
    curves: {set: {"model", "coverage", "risk"}} of risk_calibration.verdict_table."""
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, curve in curves.items():
        ax.plot(curve["coverage"], curve["risk"], label=f"{name} ({curve['model']})", linewidth=1)
    ax.set_xlabel(f"coverage (accepted by {verdict.score}, certified at {verdict.required_radius:g})")
    ax.set_ylabel("risk: wrong among accepted")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, None)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path, plt)


def ood_scores(scores: dict, path: Path) -> Path | None:
    """Histograms of the Mahalanobis OOD score (log scale) per frame set: {set: (N,) scores}."""
    import numpy as np

    if not scores:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    values = {name: np.log10(np.clip(np.asarray(s, dtype=np.float64), 1e-3, 1e12)) for name, s in scores.items()}
    bins = np.linspace(min(v.min() for v in values.values()), max(v.max() for v in values.values()) + 1e-9, 60)
    for name, v in values.items():
        ax.hist(v, bins=bins, histtype="step", density=True, label=name)
    ax.set_xlabel("log10 Mahalanobis score of h's features (higher: less like the training frames)")
    ax.set_ylabel("density")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path, plt)
