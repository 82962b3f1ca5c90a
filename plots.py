"""
The figures: a run's training curves and the sweep's evaluations, drawn with matplotlib, which is
optional (without it a one-line hint is printed and no figure is written). No torch here.

    curves(run_dir)        run_dir/curves.png from metrics.jsonl: training loss, validation loss
                           per source, learning rate, gradient norm, tokens/s against the step
                           (`python eval.py plot RUN_DIR`)
    evals(rows, run_dir)   run_dir/evals.png from eval.py's sweep rows: each metric against tokens
                           trained, with standard-error bars; one checkpoint: bars

Figures are matplotlib.figure.Figure objects, not pyplot ones: no global state, nothing to close,
and a caller (a test, a notebook) gets the figure from curves_figure / evals_figure to look at.
"""
import importlib.util, json, math, os

from config import ConfigError


def have_matplotlib(what):
    """True when matplotlib imports; otherwise the one-line hint, naming what it would draw."""
    if importlib.util.find_spec("matplotlib") is None:
        print(f"(pip install matplotlib for {what})")
        return False
    return True


def number(v):
    """v as a float, NaN for anything that is not a number (None, a string, a flag)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def grid(n, cols):
    from matplotlib.figure import Figure
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows + 0.6))
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


# -----------------------------------------------------------------------------
# training curves: metrics.jsonl, written by train.py (Trainer.log)

def read_jsonl(path, is_row):
    """(the rows of a .jsonl log that is_row accepts, the numbers of its other lines: written
    when a run or a sweep was killed, or its disk full). Blank lines are passed over."""
    rows, torn = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if isinstance(row, dict) and is_row(row):
                    rows.append(row)
                else:
                    torn.append(str(i))
    return rows, torn


def read_metrics(path):
    """The rows of a metrics.jsonl in step order: training rows (step, loss, lr, grad_norm, dt,
    tok_per_s, mfu, mem), validation rows (step, val: {source: loss, "all": ...}) and the records
    of skipped updates (step, skipped, loss: "nan"). One row per step and kind, the later one
    standing: a run resumed from a checkpoint logs the steps after it again (train.py drops the
    older lines when it can rewrite the file). A line that is not JSON (a run killed mid-write)
    is left out with a note."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file (train.py writes it in its out_dir as it trains)")
    found, torn = read_jsonl(path, lambda r: isinstance(r.get("step"), int))
    rows = {("val" in row, row["step"]): row for row in found}
    if torn:
        print(f"note: {path}: line{'s' * (len(torn) > 1)} {', '.join(torn)} not JSON, left out "
              "(written when a run was killed or its disk full)")
    if not rows:
        raise ConfigError(f"{path}: no rows to plot (train.py writes one per logged step)")
    return [rows[k] for k in sorted(rows, key=lambda k: (k[1], k[0]))]


def curves_title(name, rows):
    """The run's name, its last step, and what the rows say of its size and result."""
    parts = [f"{max(r['step'] for r in rows):,} steps"]
    params = [r["params"] for r in rows if isinstance(r.get("params"), int)]
    tokens = [r["tokens"] for r in rows if isinstance(r.get("tokens"), int)]
    if params:
        parts.append(f"{params[-1]:,} parameters")
    if tokens:
        parts.append(f"{tokens[-1]:,} tokens")
    val = [r["val"] for r in rows if isinstance(r.get("val"), dict) and "all" in r["val"]]
    if val:
        parts.append(f"val loss {number(val[-1]['all']):.4f}")
    return f"{name}: " + ", ".join(parts)


def curves_figure(rows, title):
    """The Figure of a run's rows (read_metrics): one panel per kind of figure logged, against
    the step; a panel with nothing logged (MFU on a CPU) is not drawn. None: nothing to draw."""
    train = [r for r in rows if "val" not in r and not r.get("skipped")]
    skipped = [r["step"] for r in rows if r.get("skipped")]
    val = [r for r in rows if isinstance(r.get("val"), dict)]
    sources = list(dict.fromkeys(s for r in val for s in r["val"] if s != "all"))

    def series(key, scale=1.0):
        pts = [(r["step"], number(r.get(key)) * scale) for r in train]
        return [p for p in pts if math.isfinite(p[1])]
    panels = [("training loss", {"train": series("loss")}),
              ("validation loss", {s: [(r["step"], number(r["val"].get(s))) for r in val
                                       if s in r["val"]] for s in sources + ["all"]}),
              ("learning rate", {"lr": series("lr")}),
              ("gradient norm", {"grad norm": series("grad_norm")}),
              ("tokens/s", {"tokens/s": series("tok_per_s")}),
              ("MFU (%)", {"mfu": series("mfu", 100.0)})]
    panels = [(t, lines) for t, lines in panels if any(lines.values())]
    if not panels:
        return None
    fig, axes = grid(len(panels), 3)
    for ax, (name, lines) in zip(axes, panels):
        for label, pts in lines.items():
            if pts:
                # "all" in black over the sources
                style = dict(color="black", linewidth=2) if label == "all" else {}
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label,
                        marker="o" if len(pts) < 30 else None, markersize=3, **style)
        if name == "training loss" and skipped:
            for i, s in enumerate(skipped):
                ax.axvline(s, color="red", linestyle=":", linewidth=1,
                           label=f"{len(skipped)} skipped (NaN/inf loss)" if i == 0 else None)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def curves(run_dir, out=None):
    """run_dir/metrics.jsonl drawn in one figure (out, default run_dir/curves.png); its path, or
    None without matplotlib."""
    rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    if not have_matplotlib("curves.png: the training curves of a run"):
        return None
    out = out or os.path.join(run_dir, "curves.png")
    fig = curves_figure(rows, curves_title(os.path.basename(os.path.abspath(run_dir)), rows))
    if fig is None:
        raise ConfigError(f"{run_dir}/metrics.jsonl: no finite loss, learning rate or validation "
                          "loss to plot")
    fig.savefig(out, dpi=100)
    return out


# -----------------------------------------------------------------------------
# the sweep's evaluations: eval.py's rows (ckpt, step, tokens, tasks: {task: shots}, metrics,
# and <metric>_stderr beside a task's acc and acc_norm)

ROW_KEYS = ("ckpt", "step", "tokens", "tasks")


def shots_line(rows):
    shots = rows[0].get("tasks") or {}
    if not shots:
        return "no tasks"
    if len(set(shots.values())) == 1:
        return f"{next(iter(shots.values()))}-shot"
    return "shots " + ", ".join(f"{k} {v}" for k, v in shots.items())


def evals_figure(rows, name):
    """(Figure or None, {why: [metrics left out]}) of the sweep's rows. Metrics with no value and,
    over several checkpoints, those that do not change are left out: a flat line says nothing.
    Several checkpoints: a panel per metric against tokens trained (or the step), error bars
    where the row has <metric>_stderr. One checkpoint: a bar chart per group of metrics (a
    task's acc and acc_norm; loss per source), with its error bars."""
    keys = list(dict.fromkeys(k for r in rows for k in r
                              if k not in ROW_KEYS and not k.endswith("_stderr")))
    values = {k: [number(r.get(k)) for r in rows] for k in keys}
    errors = {k: [number(r.get(k + "_stderr")) for r in rows] for k in keys
              if any(k + "_stderr" in r for r in rows)}
    left = {"no values": [], f"constant over the {len(rows)} checkpoints": []}
    metrics = []
    for k in keys:
        finite = {v for v in values[k] if math.isfinite(v)}
        if not finite:
            left["no values"].append(k)
        elif len(rows) > 1 and len(finite) == 1:
            left[f"constant over the {len(rows)} checkpoints"].append(k)
        else:
            metrics.append(k)
    left = {why: ks for why, ks in left.items() if ks}
    if not metrics:
        return None, left
    n = len(rows)
    title = f"{name}: {n} checkpoint{'s' * (n > 1)}, {shots_line(rows)}"
    if n == 1:
        groups = {}
        for k in metrics:
            groups.setdefault(k.rsplit("/", 1)[0], []).append(k)
        fig, axes = grid(len(groups), 4)
        for ax, (group, ks) in zip(axes, groups.items()):
            ys = [values[k][0] for k in ks]
            yerr = [errors[k][0] if k in errors else math.nan for k in ks]
            bars = ax.bar([k[len(group) + 1:] or k for k in ks], ys, color="tab:blue",
                          yerr=yerr if any(math.isfinite(e) for e in yerr) else None, capsize=4)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)  # a bar of 0 is a result too: say so
            if all(0 <= y <= 1 for y in ys if math.isfinite(y)):  # rates: the whole scale
                ax.set_ylim(0, 1.1)
            ax.set_title(group, fontsize=9)
            ax.tick_params(axis="x", labelsize=8, rotation=30)
        if rows[0]["ckpt"] != name:
            title += f" ({rows[0]['ckpt']})"
    else:
        # x: tokens trained; a released model's folders say only their step, if that
        x, label = list(range(n)), "checkpoint"
        for key, what in (("step", "step"), ("tokens", "tokens trained")):
            if all(r.get(key) is not None for r in rows):
                x, label = [r[key] for r in rows], what
        fig, axes = grid(len(metrics), 4)
        for ax, k in zip(axes, metrics):
            if k in errors:
                ax.errorbar(x, values[k], yerr=errors[k], marker="o", capsize=3)
            else:
                ax.plot(x, values[k], marker="o")
            ax.set_title(k, fontsize=9)
            ax.set_xlabel(label, fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig, left


def evals(rows, run_dir):
    """run_dir/evals.png of the sweep's rows (evals_figure), saying in one line what it left
    out; its path, or None (no matplotlib, or nothing to draw)."""
    if not rows or not have_matplotlib("evals.png: each metric against tokens trained"):
        return None
    name = os.path.basename(os.path.abspath(run_dir))
    fig, left = evals_figure(rows, name[:-len(".evals")] if name.endswith(".evals") else name)
    if left:
        n = sum(map(len, left.values()))
        print(f"evals.png: {n} metric{'s' * (n > 1)} left out, "
              + "; ".join(f"{why}: {', '.join(ks)}" for why, ks in left.items()))
    if fig is None:
        print("evals.png not written: no metric to draw")
        return None
    path = os.path.join(run_dir, "evals.png")
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")
    return path
