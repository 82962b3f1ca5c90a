"""plots.py: a run's curves.png from its metrics.jsonl (a real run; a torn line, a resumed run's
steps again, skipped updates), `eval.py plot`, and the sweep's evals.png (title, error bars,
flat panels left out, one checkpoint as bars); without matplotlib, a hint and no figure."""
import json, os, sys

import pytest

import eval as ev
import plots
import train
from config import ConfigError
from helpers import small_args

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402


def panels(fig):
    """{title: axes} of the figure's drawn panels."""
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def line(ax, label):
    """(x, y) of the line of that label."""
    found = [l for l in ax.get_lines() if l.get_label() == label]
    assert len(found) == 1, [l.get_label() for l in ax.get_lines()]
    return list(found[0].get_xdata()), list(found[0].get_ydata())


def write_rows(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


@pytest.fixture(scope="module")
def run4(tiny_data, tmp_path_factory):
    """A tiny run of 4 steps, validated at 0, 2 and 4."""
    out = tmp_path_factory.mktemp("plots") / "run"
    train.main(small_args(tiny_data, str(out), "--max_steps=4", "--eval_interval=2"))
    return out


def test_curves_of_a_real_run_draw_what_metrics_jsonl_holds(run4, monkeypatch, capsys):
    monkeypatch.chdir(run4.parent)
    assert ev.main(["plot", "run"]) == 0
    assert capsys.readouterr().out == "wrote run/curves.png\n"  # the path as given
    assert open(run4 / "curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    logged = [json.loads(l) for l in open(run4 / "metrics.jsonl")]
    train_rows = [r for r in logged if "loss" in r]
    val_rows = [r for r in logged if "val" in r]
    rows = plots.read_metrics(str(run4 / "metrics.jsonl"))
    title = plots.curves_title("run", rows)
    assert title == f"run: 4 steps, val loss {val_rows[-1]['val']['all']:.4f}"
    fig = plots.curves_figure(rows, title)
    assert fig._suptitle.get_text() == title
    p = panels(fig)
    # no MFU panel on a CPU: nothing was logged for it
    assert list(p) == ["training loss", "validation loss", "learning rate", "gradient norm", "tokens/s"]
    assert line(p["training loss"], "train") == ([r["step"] for r in train_rows], [r["loss"] for r in train_rows])
    assert line(p["learning rate"], "lr")[1] == [r["lr"] for r in train_rows]
    assert line(p["gradient norm"], "grad norm")[1] == [r["grad_norm"] for r in train_rows]
    assert line(p["tokens/s"], "tokens/s")[1] == [r["tok_per_s"] for r in train_rows]
    assert [l.get_label() for l in p["validation loss"].get_lines()] == ["code", "en", "zh", "all"]
    for source in ("code", "zh", "all"):
        assert line(p["validation loss"], source) == ([0, 2, 4], [r["val"][source] for r in val_rows])


def test_a_torn_line_resumed_steps_and_skipped_updates(tmp_path, capsys):
    # a run killed mid-write, then resumed from step 2: steps 3 and 4 logged twice, the later
    # rows standing; step 5 skipped (NaN loss); the last line torn
    def step(s, loss):
        return dict(step=s, loss=loss, lr=1e-3, grad_norm=0.5, dt=0.1, tok_per_s=1000.0, mfu=None, mem=None)
    rows = ([dict(step=0, val={"en": 6.0, "all": 6.0})] + [step(s, 6.0 - s / 10) for s in (1, 2, 3, 4)]
            + [dict(step=4, val={"en": 5.9, "all": 5.9})] + [step(3, 5.0), step(4, 4.0)]
            + [dict(step=4, val={"en": 4.5, "all": 4.5}), dict(step=5, skipped=True, loss="nan"), step(6, 3.5)])
    write_rows(tmp_path / "metrics.jsonl", rows, tail='{"step": 7, "loss": 3.')
    got = plots.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert f"{tmp_path / 'metrics.jsonl'}: line 12 not JSON, left out" in capsys.readouterr().out
    assert [(r["step"], "val" in r) for r in got] == [(0, True), (1, False), (2, False), (3, False), (4, False),
                                                      (4, True), (5, False), (6, False)]
    p = panels(plots.curves_figure(got, "t"))
    assert line(p["training loss"], "train") == ([1, 2, 3, 4, 6], [5.9, 5.8, 5.0, 4.0, 3.5])
    assert line(p["validation loss"], "all") == ([0, 4], [6.0, 4.5])
    skipped = line(p["training loss"], "1 skipped (NaN/inf loss)")
    assert skipped[0] == [5, 5]
    assert plots.curves(str(tmp_path)) == str(tmp_path / "curves.png") and os.path.getsize(tmp_path / "curves.png")


def test_no_metrics_is_a_one_line_error_naming_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with pytest.raises(ConfigError, match=f"^{path}: no such file"):
        plots.curves(str(tmp_path))
    path.write_text("")
    with pytest.raises(ConfigError, match=f"^{path}: no rows to plot"):
        plots.curves(str(tmp_path))
    path.write_text('{"step": 1, "lo')  # only a torn line
    with pytest.raises(ConfigError, match=f"^{path}: no rows to plot"):
        plots.curves(str(tmp_path))
    write_rows(path, [dict(step=1, skipped=True, loss="nan")])  # rows, but not one number
    with pytest.raises(ConfigError, match=f"^{path}: no finite loss"):
        plots.curves(str(tmp_path))
    assert not (tmp_path / "curves.png").exists()


def sweep_rows():
    """Three checkpoints' rows as eval.py's sweep writes them."""
    return [dict(ckpt=f"ckpt_{s:07d}", step=s, tokens=s * 4096, tasks={"arc_easy": 25, "mmlu": 5},
                 **{"loss/all": 6.0 - s / 100, "bpb_doc/all": None, "arc_easy/acc": a, "arc_easy/acc_stderr": se,
                    "mmlu/acc": 0.25, "mmlu/acc_stderr": 0.1, "mem/exact": 0.0})
            for s, a, se in ((100, 0.3, 0.05), (200, 0.4, 0.06), (300, 0.5, 0.07))]


def test_the_evals_plot_titled_with_error_bars_and_no_flat_panel(tmp_path, capsys):
    rows = sweep_rows()
    fig, left = plots.evals_figure(rows, "run")
    assert fig._suptitle.get_text() == "run: 3 checkpoints, shots arc_easy 25, mmlu 5"
    p = panels(fig)
    # mmlu/acc and mem/exact do not change, bpb_doc/all has no value: left out, and said so
    assert list(p) == ["loss/all", "arc_easy/acc"]
    assert left == {"no values": ["bpb_doc/all"], "constant over the 3 checkpoints": ["mmlu/acc", "mem/exact"]}
    assert not [c for c in p["loss/all"].containers if isinstance(c, ErrorbarContainer)]  # no stderr, no bar
    bars = [c for c in p["arc_easy/acc"].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and bars[0].has_yerr
    data_line, _, (segments,) = bars[0].lines
    assert list(data_line.get_xdata()) == [r["tokens"] for r in rows]  # against tokens trained
    spans = [(seg[0][1], seg[1][1]) for seg in segments.get_segments()]
    acc, se = ([r[f"arc_easy/{k}"] for r in rows] for k in ("acc", "acc_stderr"))
    assert spans == pytest.approx([(a - e, a + e) for a, e in zip(acc, se)])
    # through eval.py's table: the figure is written, and what it left out is said in one line
    ev.write_table(rows, str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert ("evals.png: 3 metrics left out, no values: bpb_doc/all; constant over the 3 checkpoints: "
            "mmlu/acc, mem/exact") in out
    assert f"wrote {tmp_path}/evals.png" in out and os.path.getsize(tmp_path / "evals.png") > 0


def test_one_checkpoint_is_a_bar_chart(tmp_path):
    row = sweep_rows()[1]
    fig, left = plots.evals_figure([row], "hf_model")
    assert left == {"no values": ["bpb_doc/all"]}  # one value is no flat line: mmlu's 0.25 stays
    assert fig._suptitle.get_text() == "hf_model: 1 checkpoint, shots arc_easy 25, mmlu 5 (ckpt_0000200)"
    p = panels(fig)
    assert list(p) == ["loss", "arc_easy", "mmlu", "mem"]
    (bars,) = [c for c in p["arc_easy"].containers if isinstance(c, BarContainer)]
    assert [b.get_height() for b in bars] == [0.4]
    assert bars.errorbar is not None and bars.errorbar.has_yerr
    assert [t.get_text() for t in p["mem"].get_xticklabels()] == ["exact"]
    (zero,) = [c for c in p["mem"].containers if isinstance(c, BarContainer)]
    assert [b.get_height() for b in zero] == [0.0] and zero.errorbar is None
    assert [t.get_text() for t in p["mem"].texts] == ["0.000"]  # a bar of 0, labelled
    # nothing left to draw: no figure, said in a line
    fig, left = plots.evals_figure([dict(ckpt="x", step=None, tokens=None, tasks={}, **{"a/acc": None})], "x")
    assert fig is None and left == {"no values": ["a/acc"]}


def test_without_matplotlib_a_hint_and_no_figure(run4, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert plots.curves(str(run4), str(tmp_path / "c.png")) is None
    assert ev.main(["plot", str(run4), f"--out={tmp_path / 'c.png'}"]) == 1
    ev.write_table(sweep_rows(), str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("(pip install matplotlib for curves.png") == 2 and "(pip install matplotlib for evals.png" in out
    assert sorted(os.listdir(tmp_path)) == ["evals.csv", "evals.md"]

