"""The offline HTML report, on synthetic results built from random arrays (no model needed).

Structural tests read the HTML; the browser tests open it in headless Chromium with the network cut
and check in the resulting DOM that every plotly figure and every circuitsvis view rendered.
"""

from __future__ import annotations

import colorsys
import dataclasses
import html
import re
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.io.json import to_json_plotly

from logitscope import AttentionView, Prompt, StudyResult
from logitscope.inputs.circuits import IOI_HEAD_CLASSES, ioi_head_class, is_gpt2_small, known_circuit
from logitscope.report import notebook_html, report_frame_html, report_html, write_report
from logitscope.report.assets import circuitsvis_js, plotly_js
from logitscope.report.figures import make_figures

FIGURES = ["logit_lens", "layer_attribution", "head_attribution", "logit_diff_hist", "decomposition"]
VIEWS = ["cv-heads-positive", "cv-patterns-positive", "cv-heads-negative", "cv-patterns-negative"]
TOKENS = ["<|endoftext|>", "When", " John", " and", " Mary", " went", " to", " the", " shops", ",", " John", " gave", " the", " bag", " to"]


# ------------------------------------------------------------------------------------------ fixtures
def _attention(n_layers: int, n_heads: int, rng: np.random.Generator, tokens: list[str] = TOKENS) -> AttentionView:
    """A causal (lower-triangular), row-normalised pattern for every head."""
    T = len(tokens)
    p = rng.random((n_layers, n_heads, T, T)) * np.tril(np.ones((T, T)))
    return AttentionView.from_all_heads(0, list(tokens), (p / p.sum(-1, keepdims=True)).astype(np.float32))


def make_result(
    n_layers: int = 12,
    n_heads: int = 12,
    n_prompts: int = 40,
    *,
    model: str = "gpt2",
    family: str = "gpt2",
    norm: str = "LayerNorm",
    pos_embed: bool = True,
    attention: bool = True,
    ioi_meta: bool = True,
    seed: int = 0,
) -> StudyResult:
    """A consistent synthetic result: parts sum to the logit difference up to ~1e-7."""
    rng = np.random.default_rng(seed)
    L, H, N = n_layers, n_heads, n_prompts
    heads = rng.normal(0.0, 0.3, size=(L, H, N))
    attn_bias = rng.normal(0.0, 0.05, size=(L, N))
    mlp_bias = rng.normal(0.0, 0.05, size=(L, N))
    mlp = mlp_bias + rng.normal(0.0, 0.2, size=(L, N))
    embed = rng.normal(0.0, 0.1, size=N)
    pos = rng.normal(0.0, 0.1, size=N) if pos_embed else None
    final_bias = rng.normal(0.0, 0.1, size=N)
    attn = heads.sum(1) + attn_bias
    logit_diff = embed + (pos if pos is not None else 0.0) + attn.sum(0) + mlp.sum(0) + final_bias + rng.normal(0, 1e-7, size=N)
    prompts = []
    for i in range(N):
        meta = {"template": i % 3 + 1, "order": "ABBA" if i % 2 else "BABA", "io": "Mary", "s": "John"} if ioi_meta else {"line": i + 1}
        prompts.append(Prompt(f"When John and Mary went to the shops, John gave <b>bag {i}</b> to", " Mary", " John", meta))
    return StudyResult(
        model=model, family=family, norm=norm, parallel_attn_mlp=False, device="cpu", dtype="float32",
        n_layers=L, n_heads=H, prompts=prompts,
        correct_ids=np.full(N, 5335), incorrect_ids=np.full(N, 1757), n_tokens=np.full(N, 15),
        logit_diff=logit_diff, prob_correct=rng.uniform(0, 1, N), prob_incorrect=rng.uniform(0, 1, N),
        direct=logit_diff - final_bias, scale=rng.uniform(1, 3, N), embed=embed, pos_embed=pos, attn_out=attn,
        mlp_out=mlp, head_results=heads, attn_bias=attn_bias, mlp_bias=mlp_bias, final_norm_bias=final_bias,
        attention=_attention(L, H, rng) if attention else None,
        top_k=3, seed=seed, version="9.9.9-test", created="2026-01-02T03:04:05+00:00",
    )


@pytest.fixture(scope="module")
def gpt2_result() -> StudyResult:
    return make_result()


@pytest.fixture(scope="module")
def small_result() -> StudyResult:
    return make_result(2, 4, 10, model="tiny-rms", family="llama", norm="RMSNorm", pos_embed=False, seed=1)


@pytest.fixture(scope="module")
def gpt2_html(gpt2_result: StudyResult) -> str:
    return report_html(gpt2_result)


@pytest.fixture(scope="module")
def small_html(small_result: StudyResult) -> str:
    return report_html(small_result)


# ------------------------------------------------------------------------------------------ circuits
def test_known_circuit_is_the_ioi_papers_26_heads():
    heads = [h for hs in IOI_HEAD_CLASSES.values() for h in hs]
    assert len(heads) == len(set(heads)) == 26
    info = {"model": "gpt2", "family": "gpt2", "n_layers": 12, "n_heads": 12}
    assert ioi_head_class(info, 9, 9) == "name mover"
    assert ioi_head_class(info, 10, 7) == "negative name mover"
    assert ioi_head_class(info, 11, 2) == "backup name mover"
    assert ioi_head_class(info, 8, 10) == "S-inhibition"
    assert ioi_head_class(info, 5, 5) == "induction"
    assert ioi_head_class(info, 0, 1) == "duplicate token"
    assert ioi_head_class(info, 4, 11) == "previous token"
    assert ioi_head_class(info, 1, 1) is None
    assert known_circuit(info)[(9, 6)] == "name mover"
    for name in ("gpt2-small", "openai-community/gpt2", "/models/gpt2", "./gpt2-small/"):
        assert is_gpt2_small({**info, "model": name})
    # Same shape, not GPT-2 small: a random or fine-tuned checkpoint gets no IOI classes.
    assert not is_gpt2_small({**info, "model": "/models/my-gpt2"})
    assert not is_gpt2_small({**info, "model": "bench/.cache/gpt2-small-random"})
    assert not is_gpt2_small({**info, "family": "llama"})
    assert not is_gpt2_small({**info, "n_layers": 24, "n_heads": 16})  # gpt2-medium
    assert not is_gpt2_small({"model": "tiny", "family": "llama", "n_layers": 12, "n_heads": 12})
    assert known_circuit({"model": "gpt2", "family": "gpt2", "n_layers": 2, "n_heads": 4}) is None


# ------------------------------------------------------------------------------------------ figures
def test_make_figures(gpt2_result: StudyResult):
    figs = make_figures(gpt2_result)
    assert list(figs) == FIGURES
    assert all(isinstance(f, go.Figure) for f in figs.values())
    lens = figs["logit_lens"].data[0]
    lo, hi = gpt2_result.intervals["logit_lens"]
    assert list(lens.x) == gpt2_result.logit_lens_labels
    np.testing.assert_allclose(lens.y, gpt2_result.logit_lens)
    np.testing.assert_allclose(lens.error_y.array, hi - gpt2_result.logit_lens)
    np.testing.assert_allclose(lens.error_y.arrayminus, gpt2_result.logit_lens - lo)
    layer = figs["layer_attribution"].data[0]
    assert list(layer.x) == gpt2_result.layer_labels and layer.error_y.array is not None
    heat = figs["head_attribution"].data[0]
    assert heat.zmid == 0 and heat.zmin == -heat.zmax
    assert heat.colorscale[0][1].lower() != heat.colorscale[-1][1].lower()  # diverging
    np.testing.assert_allclose(np.asarray(heat.z), gpt2_result.head_attribution)
    assert heat.customdata[9][6][0] == "L9H6" and "%{customdata[0]}" in heat.hovertemplate
    assert heat.text[9][9] == "NM" and heat.text[10][7] == "NNM" and heat.text[1][1] == ""
    hist = figs["logit_diff_hist"].data[0]  # counts of the prompts in each bin (numpy's own count)
    counts, _ = np.histogram(gpt2_result.logit_diff, bins=len(hist.y))
    assert list(hist.y) == counts.tolist() and sum(hist.y) == gpt2_result.n_prompts
    # The waterfall's parts add up to the mean logit difference, up to the residual error.
    parts = figs["decomposition"].data[0].y[:-1]
    assert abs(sum(parts) - gpt2_result.mean_logit_diff) < 1e-5


def test_figures_without_known_circuit(small_result: StudyResult):
    figs = small_result.figures()  # through StudyResult
    heat = figs["head_attribution"].data[0]
    assert np.asarray(heat.z).shape == (2, 4)
    assert heat.text is None
    assert "pos_embed" not in list(figs["layer_attribution"].data[0].x)


# ------------------------------------------------------------------------------------------ structure
_EXTERNAL = re.compile(r"<(script|link|img|iframe|source|embed)\b[^>]*\b(src|href)\s*=\s*[\"']?\s*(https?:)?//", re.I)


def _check_offline_structure(page: str, result: StudyResult) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert not _EXTERNAL.search(page), "a script, link or image loads from the network"
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", page, re.I), "every script must be inline"
    ours = page.replace(plotly_js(), "").replace(circuitsvis_js(), "")  # the page without the two libraries
    assert "unpkg.com" not in ours and "cdn.plot.ly" not in ours and "import " not in ours
    assert "sourceMappingURL" not in page
    # plotly.js exactly once; every <script> closed by its own </script> (nothing inlined breaks out).
    assert page.count(plotly_js()[:300]) == 1
    for lib in (plotly_js(), circuitsvis_js()):
        assert not re.search(r"</script", lib, re.I)
    assert len(re.findall(r"<script\b", ours, re.I)) == len(re.findall(r"</script", ours, re.I))
    # Every figure, with its data.
    figs = make_figures(result)
    for name, fig in figs.items():
        assert page.count(f'id="fig-{name}"') == 1
        assert re.search(rf'Plotly\.newPlot\(\s*"fig-{name}"', page)
        assert to_json_plotly(fig.to_dict()["data"]) in page, f"data of figure {name} missing"
    assert page.count("Plotly.newPlot(") == len(figs)
    # Header facts.
    lo, hi = result.intervals["logit_diff"]
    for text in (result.model, result.device, result.dtype, f"{result.n_prompts:,}", f"{result.mean_logit_diff:.3f}",
                 f"[{lo:+.3f}, {hi:+.3f}]", f"direct {result.direct.mean():.4f}", "Residual error", result.created, result.version):
        assert html.escape(text) in page, text
    for section in ("logit-lens", "layers", "heads", "top-heads", "attention", "prompts", "decomposition"):
        assert f'id="{section}"' in page
    assert page.count('<p class="caption"><span>') == 7  # two-line captions, one per section
    # Prompt text is escaped, never markup.
    assert "<b>bag 0</b>" not in page and "&lt;b&gt;bag 0&lt;/b&gt;" in page


def test_report_structure_gpt2(gpt2_result: StudyResult, gpt2_html: str):
    page = gpt2_html
    _check_offline_structure(page, gpt2_result)
    assert "LayerNorm (centred)" in page
    # circuitsvis: bundle once, one render call per view, props in camelCase, seed-style head names.
    assert page.count(circuitsvis_js()[:300]) == 1
    assert page.count("CircuitsVis.render(") == 4
    for view in VIEWS:
        assert page.count(f'id="{view}"') == 1
    assert 'CircuitsVis.render("cv-heads-positive", CircuitsVis.AttentionHeads, ' in page
    assert 'CircuitsVis.render("cv-patterns-negative", CircuitsVis.AttentionPatterns, ' in page
    names = [f"{l}.{h}" for l, h, _ in gpt2_result.signed_top_heads(1)]
    assert '"attentionHeadNames":["' + '","'.join(names) + '"]' in page
    assert "\\u003c|endoftext|\\u003e" in page  # tokens are JSON-escaped inside the script
    # Known circuit: legend, table column, heatmap tags.
    assert "Known circuit" in page and "IOI class" in page and "negative name mover" in page
    top = gpt2_result.top_heads(sign=1)[0]
    cls = ioi_head_class(gpt2_result, top[0], top[1])
    assert (cls or "—") in page


def test_report_structure_small_rmsnorm(small_result: StudyResult, small_html: str):
    page = small_html
    _check_offline_structure(page, small_result)
    assert "RMSNorm (no centring)" in page and "LayerNorm (centred)" not in page
    assert "Known circuit" not in page and "IOI class" not in page and "name mover" not in page
    assert page.count(circuitsvis_js()[:300]) == 1


def test_report_without_attention_skips_the_bundle():
    result = make_result(2, 4, 6, model="tiny", attention=False)
    page = report_html(result)
    assert "CircuitsVis" not in page
    assert "No attention patterns were recorded" in page
    assert page.count(plotly_js()[:300]) == 1


def test_script_end_tags_in_tokens_cannot_break_out():
    result = dataclasses.replace(make_result(2, 4, 6, model="tiny", seed=3), attention=_attention(
        2, 4, np.random.default_rng(0), ["<s>", "</script><script>alert(1)</script>", " x"]))
    page = report_html(result)
    assert "alert(1)</script>" not in page
    ours = page.replace(plotly_js(), "").replace(circuitsvis_js(), "")
    assert len(re.findall(r"<script\b", ours, re.I)) == len(re.findall(r"</script", ours, re.I))


def test_prompt_table_is_bounded_and_templates_are_summarised():
    result = make_result(2, 4, 1000, model="tiny", attention=False, seed=2)
    page = report_html(result)
    table = page[page.index("<h3>Prompts</h3>") :]
    table = table[: table.index("</table>")]
    assert table.count("<tr") == 201  # header + 200 rows
    assert "Showing the first 200 of 1,000 prompts" in page
    assert "<h3>By template</h3>" in page
    for row in result.by_template():
        assert f'{row["logit_diff_mean"]:+.3f}' in page
    plain = report_html(make_result(2, 4, 5, model="tiny", attention=False, ioi_meta=False))
    assert "By template" not in plain and "All 5 prompts." in plain


def test_decomposition_section(gpt2_result: StudyResult, gpt2_html: str):
    err = float(np.abs(gpt2_result.decomposition_error).max())
    assert "residual error" in gpt2_html and f"{err:.2e}" in gpt2_html
    for label in ("embed", "pos_embed", "L9H6", "11_attn_bias", "3_mlp_neurons", "0_mlp_bias", "final_norm_bias"):
        assert f"<code>{label}</code>" in gpt2_html
    assert f"All {len(gpt2_result.decomposition_labels)} components" in gpt2_html


# ------------------------------------------------------------------------------------------ writing
def test_write_report_is_atomic(tmp_path: Path, small_result: StudyResult, monkeypatch: pytest.MonkeyPatch):
    out = small_result.write_report(tmp_path / "sub" / "report.html")  # through StudyResult
    assert out == tmp_path / "sub" / "report.html"
    assert out.read_text(encoding="utf-8") == report_html(small_result)
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]

    import logitscope.report as report

    def boom(result: StudyResult, *rest) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "report_html", boom)
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        write_report(small_result, out)
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


def test_write_report_cleans_up_when_writing_fails(tmp_path: Path, small_result: StudyResult, monkeypatch: pytest.MonkeyPatch):
    import os

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_report(small_result, tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []


def test_notebook_display_is_light(gpt2_result: StudyResult):
    """What a notebook shows for ``result``: plain HTML, no script, no inlined bundle (a saved
    notebook used to grow by ~7 MB per display); the summary, the heatmap, the top heads."""
    nb = gpt2_result._repr_html_()
    assert nb == notebook_html(gpt2_result)
    assert "<script" not in nb and "<iframe" not in nb
    assert len(nb.encode()) < 100_000, len(nb.encode())
    assert html.escape(gpt2_result.summary()) in nb
    assert nb.count("<td title=\"L") == 12 * 12  # every head a coloured cell, with its value on hover
    l, h, v = gpt2_result.signed_top_heads(1)[0]
    assert f"<b>L{l}H{h}</b>" in nb and f"{v:+.3f}" in nb
    assert "result.report_view()" in nb and "By template" not in nb and "by template" in nb


def test_report_view_is_the_whole_report_in_a_frame(small_result: StudyResult, small_html: str):
    view = small_result.report_view(height=700)
    frame = view._repr_html_()
    assert frame == report_frame_html(small_result, 700)
    assert "<script" not in frame  # the report's scripts live inside the escaped srcdoc only
    srcdoc = re.search(r'<iframe srcdoc="([^"]*)"', frame).group(1)
    assert html.unescape(srcdoc) == small_html
    assert "mean logit diff" in frame  # the plain-text summary, readable where iframes are not shown
    assert "height:700px" in frame and frame.isascii()
    assert len(frame.encode()) > 5_000_000  # which is why it is not the default display


# ------------------------------------------------------------------------------------------ browser
from conftest import CHROMIUM  # noqa: E402  (tests marked browser are skipped or failed there without it)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Rendered(HTMLParser):
    """For each element whose id is in ``ids``: how many elements it contains and their classes."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(convert_charrefs=True)
        self.ids = set(ids)
        self.stack: list[str | None] = []  # id of the tracked element each open tag belongs to
        self.children = {i: 0 for i in ids}
        self.classes: dict[str, set[str]] = {i: set() for i in ids}
        self.found: set[str] = set()

    def _open(self, tag: str, attrs: list[tuple[str, str | None]], void: bool) -> None:
        a = dict(attrs)
        for tracked in {t for t in self.stack if t}:
            self.children[tracked] += 1
            self.classes[tracked].update((a.get("class") or "").split())
        own = a.get("id") if a.get("id") in self.ids else None
        if own:
            self.found.add(own)
        if not void:
            self.stack.append(own)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, tag in VOID)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, True)

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID and self.stack:
            self.stack.pop()


def _offline_prefix() -> list[str]:
    """``unshare -n`` (a fresh network namespace with no interfaces) when we may; else nothing, and
    the browser flags below point every host at nowhere."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


def render_dom(page: Path, tmp: Path) -> tuple[str, str]:
    """Open ``page`` in headless Chromium with no network, let scripts run, return (DOM, stderr)."""
    cmd = _offline_prefix() + [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", f"--user-data-dir={tmp / 'profile'}",
        "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr",
        "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def rendering_failures(dom: str, figures: list[str], views: list[str]) -> list[str]:
    """What did not render: plotly figures whose div has no ``main-svg``, views with no children."""
    parser = _Rendered([f"fig-{f}" for f in figures] + views)
    parser.feed(dom)
    bad = [f"figure {f}" for f in figures if "main-svg" not in parser.classes[f"fig-{f}"]]
    return bad + [f"view {v}" for v in views if parser.children[v] == 0]


@pytest.mark.browser
@pytest.mark.parametrize("which", ["gpt2", "small"])
def test_report_renders_offline_in_chromium(which: str, request: pytest.FixtureRequest, tmp_path: Path):
    result = request.getfixturevalue(f"{which}_result")
    page = write_report(result, tmp_path / "report.html")
    dom, log = render_dom(page, tmp_path)
    assert "Uncaught" not in log, log[-2000:]
    assert rendering_failures(dom, FIGURES, VIEWS) == []
    # circuitsvis drew the head names and the tokens, not just an empty shell.
    for l, h, _ in result.signed_top_heads(1):
        assert f">{l}.{h}<" in dom


@pytest.mark.browser
def test_browser_check_catches_broken_rendering(small_html: str, tmp_path: Path):
    """The check above is not vacuous: without the bundles nothing renders, and it says so."""
    broken = small_html.replace(plotly_js(), "").replace(circuitsvis_js(), "")
    assert len(broken) < len(small_html) - 5_000_000
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    dom, _ = render_dom(page, tmp_path)
    assert rendering_failures(dom, FIGURES, VIEWS) == [f"figure {f}" for f in FIGURES] + [f"view {v}" for v in VIEWS]


def test_demo_result_builds_a_report_with_the_known_circuit():
    from logitscope.report.demo import synthetic_result

    result = synthetic_result(n_prompts=50)
    assert float(np.abs(result.decomposition_error).max()) < 1e-4
    assert known_circuit(result) is not None
    assert [(l, h) for l, h, _ in result.top_heads(sign=1)] == [(9, 9), (9, 6), (10, 0)]
    assert "Known circuit" in report_html(result)


def test_demo_writes_where_it_is_told(tmp_path):
    """python -m logitscope.report.demo takes the output path; without one it writes nothing."""
    import sys

    cmd = [sys.executable, "-m", "logitscope.report.demo"]
    bare = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert bare.returncode == 2 and "REPORT.html" in bare.stderr
    assert list(tmp_path.iterdir()) == []  # no ./report.html written
    from logitscope.report.demo import main

    assert main([str(tmp_path / "sub" / "demo.html")]) == 0
    assert (tmp_path / "sub" / "demo.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    with pytest.raises(SystemExit):
        main([str(tmp_path)])  # a folder is not a file name


# ------------------------------------------------------------------------------------------ issue 19: figures
def _colour(c: str) -> np.ndarray:
    return np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)


def test_line_figures_show_every_label_on_many_layers():
    """plotly thins category ticks (a 30-layer model's peak sat between two unlabeled ticks): every
    label is an explicit tick, upright when they would not fit side by side."""
    result = make_result(n_layers=30, n_heads=4, n_prompts=12, attention=False)
    figs = make_figures(result)
    for name, labels in (("logit_lens", result.logit_lens_labels), ("layer_attribution", result.layer_labels)):
        axis = figs[name].layout.xaxis
        assert axis.tickmode == "array" and list(axis.tickvals) == labels and list(axis.ticktext) == labels, name
        assert axis.tickangle == -90 and "23_attn_out" in list(figs["layer_attribution"].layout.xaxis.ticktext)
        assert figs[name].layout.margin.b >= 0.6 * 10 * max(map(len, labels))  # room for the upright labels
    small = make_figures(make_result(n_layers=2, n_heads=4, n_prompts=12, attention=False))
    assert small["layer_attribution"].layout.xaxis.tickangle == 0  # few labels stay level


def test_figure_titles_are_wrapped_below_the_mode_bar_and_fill_the_card():
    from logitscope.report.figures import CARD_WIDTH, TITLE_TOP, wrap_title

    long = "Each key/value head's keys (k), all positions: attribution patching (first-order estimate) " * 2
    lines = wrap_title(long.strip()).split("<br>")
    assert len(lines) > 1 and all(len(x) * 0.55 * 15 <= CARD_WIDTH for x in lines)
    assert " ".join(lines) == long.strip()  # nothing lost
    fig = make_figures(make_result(n_layers=2, n_heads=4, n_prompts=12, attention=False))["logit_lens"]
    assert fig.layout.title.yref == "container" and fig.layout.title.pad.t == TITLE_TOP
    assert fig.layout.margin.t >= TITLE_TOP + 20 and fig.layout.width is None  # fills the card (responsive)


def test_histogram_is_binned_and_bounded_in_the_number_of_prompts():
    """The histogram holds at most 60 bins, not one value per prompt: counted here against
    numpy's own count of the prompts in each bin."""
    for n in (40, 20000):
        result = make_result(n_layers=2, n_heads=2, n_prompts=n, attention=False, ioi_meta=False)
        bar = make_figures(result)["logit_diff_hist"].data[0]
        ld = np.asarray(result.logit_diff)
        assert len(bar.x) <= 60 and sum(bar.y) == n
        lo, hi = np.asarray(bar.customdata)[:, 0], np.asarray(bar.customdata)[:, 1]
        inside = [((ld >= a) & ((ld < b) | (b == hi[-1]) & (ld <= b))).sum() for a, b in zip(lo, hi)]
        assert list(bar.y) == inside
    assert len(to_json_plotly(make_figures(result)["logit_diff_hist"])) < 20_000


@pytest.fixture(scope="module")
def deep_checkpoint(tmp_path_factory):
    from logitscope.demo_checkpoint import make_demo_checkpoint

    folder = tmp_path_factory.mktemp("deep")
    make_demo_checkpoint(folder, n_layers=30)
    return folder


def _load(folder):
    from logitscope.models.load import load_model

    return load_model(str(folder), device="cpu")


def test_heads_by_position_is_one_layer_by_head_panel_per_position(deep_checkpoint):
    """`--what heads_by_pos` on 30 layers: not a 120 x 1 strip with every other label, but a
    layer x head heatmap per position, each panel the grid's normalised values at that position."""
    from logitscope import run_patching
    from logitscope.report.patching import grid_figure

    res = run_patching("ioi:2", _load(deep_checkpoint), what="heads_by_pos", positions="named")  # the layout, not the values
    fig = grid_figure(res, "attn_head_out_by_pos")
    norm = res.normalised("attn_head_out_by_pos")  # [layer, position, head]
    assert len(fig.data) == norm.shape[1] == len(res.positions.labels)
    for k, trace in enumerate(fig.data):
        np.testing.assert_array_equal(np.asarray(trace.z, dtype=float), norm[:, k, :])
        assert list(trace.y) == [f"L{l}" for l in range(30)]
    assert [a.text for a in fig.layout.annotations] == [f"@ {p}" for p in res.positions.labels]
    assert list(fig.layout.yaxis.tickvals) == [f"L{l}" for l in range(30)]  # every layer labelled
    one = grid_figure(run_patching("ioi:2", _load(deep_checkpoint), what="heads_by_pos", positions="end"),
                      "attn_head_out_by_pos")
    assert len(one.data) == 1 and np.asarray(one.data[0].z).shape == (30, 4)


def test_an_undefined_grid_is_said_in_words_not_drawn(tiny_gpt2_dir, tmp_path):
    """Pairs whose corrupted prompt is the clean one: clean − corrupted = 0, every normalised cell
    NaN; the report says so instead of drawing an empty heatmap."""
    import json as _json

    from logitscope import run_patching

    rows = [{"prompt": t, "correct": " Mary", "incorrect": " John", "corrupted": t}
            for t in ("When John and Mary went to the shops, John gave the bag to",
                      "When John and Mary went to the park, John gave the ball to")]
    path = tmp_path / "same.jsonl"
    path.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (whether and how this warns is the patching engine's)
        res = run_patching(str(path), _load(tiny_gpt2_dir), what="heads")
    assert not np.isfinite(res.normalised("attn_head_out_all_pos")).any()  # NaN (or ±inf from float noise / 0)
    page = report_html(res.study, res)
    assert 'data-figure="patch_attn_head_out_all_pos"' not in page
    assert "Every normalised value is undefined" in page and "clean − corrupted = 0" in page


def test_patching_figures_fill_the_card_and_label_every_row(tiny_gpt2_dir):
    from logitscope import run_patching
    from logitscope.report.figures import TITLE_TOP
    from logitscope.report.patching import MIN_PLOT_HEIGHT, patching_figures

    res = run_patching("ioi:6", _load(tiny_gpt2_dir), what="heads,resid,ablation")
    for name, fig in patching_figures(res).items():
        lay = fig.layout
        assert lay.width is None, name  # the card's width, not ~450 px in a 1,000 px card
        assert lay.title.yref == "container" and lay.title.pad.t == TITLE_TOP, name
        assert lay.height - lay.margin.t - lay.margin.b >= MIN_PLOT_HEIGHT, name  # no squashed colour bar
        assert lay.xaxis.tickmode == "array" and list(lay.xaxis.tickvals) == [str(x) for x in fig.data[0].x], name


def test_completeness_markers_differ_and_an_empty_random_k_is_listed_once(tiny_gpt2_dir):
    from logitscope import run_patching
    from logitscope.report.circuit import K_MARKERS, completeness_figure, listed_completeness

    hues = [colorsys.rgb_to_hsv(*(_colour(c) / 255))[0] * 360 for _, c, _ in K_MARKERS.values()]
    gaps = [min(abs(a - b), 360 - abs(a - b)) for i, a in enumerate(hues) for b in hues[i + 1:]]
    assert min(gaps) >= 30, K_MARKERS  # "K = ∅" (#4a5361) and "a class" (#2f5fb3) were both hue ~218°
    res = run_patching("ioi:6", _load(tiny_gpt2_dir), what="none", circuit="nm: L1H0 @ END; s: L0H1 @ END",
                       circuit_random=6)
    rows = res.circuit.measures["completeness"]
    assert not [r for r in rows if r["source"] == "random" and not r["heads"]]  # random K are never ∅ now
    assert listed_completeness(res.circuit) == (rows, 0)
    # A result saved before random K were drawn distinct may hold K = ∅ among its random sets: the
    # report lists it once (results.json keeps every row).
    import dataclasses

    empty = next(r for r in rows if r["source"] == "empty")
    old = dataclasses.replace(res.circuit)
    old.__dict__["measures"] = {**res.circuit.measures, "completeness": [*rows, {**empty, "source": "random",
                                                                                 "k": "random 9"}]}
    listed, dropped = listed_completeness(old)
    assert dropped == 1 and listed == rows
    drawn = sum(len(t.x) for t in completeness_figure(old).data[1:])
    assert drawn == len(listed)
    page = report_html(res.study, dataclasses.replace(res, circuit=old))
    assert "1 random K equal to ∅ not listed again" in page
