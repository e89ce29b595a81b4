"""Plain-text tables both demos print (make demo, make demo-runner); no imports beyond the standard library."""

from __future__ import annotations


def class_table(metrics: dict) -> str:
    """The per-class table of a report's class_metrics, as plain text."""
    width = max([len("class")] + [len(row["class"]) for row in metrics["per_class"]])
    lines = [f"  {'class':<{width}}  precision  recall     F1  support"]
    for row in metrics["per_class"]:
        lines.append(f"  {row['class']:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}"
                     f"  {row['support']:7d}")
    lines.append(f"  {'macro-F1':<{width}}  {'':9}  {'':6}  {metrics['macro_f1']:5.3f}  {metrics['cells']:7d}")
    return "\n".join(lines)
