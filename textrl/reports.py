"""Markdown + PNG reports written at the end of a training run.

Curves are easier to look at than to read, so each run leaves ``report.md``
with its numbers and PNG figures beside it, all written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from textrl.checkpoint import write_atomically  # noqa: E402


def save_figure(figure: plt.Figure, path: Path) -> None:
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=120))
    plt.close(figure)


def loss_figure(losses: Sequence[float], title: str, last_step: int | None = None) -> plt.Figure:
    """``losses`` of the optimizer steps that end at ``last_step`` (default: ``len(losses)``):
    a resumed run's losses start after its checkpoint's step."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    end = len(losses) if last_step is None else last_step
    axis.plot(range(end - len(losses) + 1, end + 1), losses)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def accuracy_figure(
    accuracies: Mapping[str, Mapping[str, float]], ratings: Sequence[str]
) -> plt.Figure:
    """Grouped bars: accuracy per rating for each evaluated split."""
    figure, axis = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(accuracies))
    for offset, (split, values) in enumerate(accuracies.items()):
        positions = [i + offset * width for i in range(len(ratings))]
        axis.bar(positions, [values.get(r, float("nan")) for r in ratings], width, label=split)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(ratings))], ratings, fontsize=8)
    axis.axhline(0.5, color="gray", linewidth=0.8, linestyle="--")
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def write_report(
    output_dir: Path, title: str, sections: Sequence[str], figures: Mapping[str, plt.Figure]
) -> Path:
    """``report.md`` with ``sections`` and the figures saved as PNG files beside it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    for name, figure in figures.items():
        save_figure(figure, output_dir / f"{name}.png")
        lines += [f"![{name}]({name}.png)", ""]
    lines += [section + "\n" for section in sections]
    report = output_dir / "report.md"
    write_atomically(report, lambda handle: handle.write("\n".join(lines).encode()))
    return report


def reward_vs_kl_figure(
    kl: Sequence[float], gold: Sequence[float], proxy: Sequence[float]
) -> plt.Figure:
    """Gold and proxy reward against the KL distance ``sqrt(KL(pi || pi_init))``, the axes of
    Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization" (arXiv:2210.10760):
    a proxy that keeps rising while the gold reward turns down is over-optimisation."""
    distance = [max(value, 0.0) ** 0.5 for value in kl]
    figure, gold_axis = plt.subplots(figsize=(6, 3.8))
    gold_axis.plot(distance, gold, "o-", color="tab:green", label="gold reward (judge)")
    gold_axis.set_xlabel("KL distance sqrt(KL) from the initial policy (sqrt nats)")
    gold_axis.set_ylabel("gold reward", color="tab:green")
    proxy_axis = gold_axis.twinx()
    proxy_axis.plot(distance, proxy, "s--", color="tab:blue", label="proxy reward (RM)")
    proxy_axis.set_ylabel("proxy reward (whitened RM score)", color="tab:blue")
    gold_axis.grid(alpha=0.3)
    figure.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats with three decimals."""

    def cell(value: object) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
