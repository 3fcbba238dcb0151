"""The report's stylesheet: system fonts only (nothing to fetch), cards, quiet tables."""

CSS = """
:root { --ink:#1f2933; --muted:#5f6b7a; --faint:#8a94a6; --line:#e3e7ed; --bg:#f6f7f9; --card:#fff;
        --accent:#2f5fb3; --neg:#b83227; --pos:#1f5fa8; }
* { box-sizing: border-box; }
html { background: var(--bg); }
body { margin: 0; color: var(--ink); font: 14px/1.5 Inter, "Segoe UI", "Helvetica Neue", Helvetica, Arial,
       "Liberation Sans", sans-serif; -webkit-font-smoothing: antialiased; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 28px 56px; }
h1 { font-size: 24px; font-weight: 650; margin: 0 0 2px; letter-spacing: -0.01em; }
h2 { font-size: 18px; font-weight: 620; margin: 0 0 4px; }
h3 { font-size: 14px; font-weight: 620; margin: 18px 0 6px; color: var(--ink); }
.subtitle { color: var(--muted); margin: 0 0 18px; }
header.card { padding: 22px 26px 18px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 20px 24px;
        margin: 0 0 18px; box-shadow: 0 1px 2px rgba(16,24,40,.04); }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 12px 28px; margin: 0; }
.facts div { min-width: 0; }
.facts dt { font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: var(--faint); margin: 0; }
.facts dd { margin: 1px 0 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.facts dd .big { font-size: 20px; font-weight: 650; }
.facts dd small { color: var(--muted); }
nav.toc { display: flex; flex-wrap: wrap; gap: 6px 16px; margin: 16px 0 0; padding-top: 12px;
          border-top: 1px solid var(--line); font-size: 13px; }
nav.toc a { color: var(--accent); text-decoration: none; }
nav.toc a:hover { text-decoration: underline; }
.caption { color: var(--muted); margin: 0 0 12px; font-size: 13px; }
.caption span { display: block; }
.figure { margin: 6px 0 4px; }
.figure.center > div { margin: 0 auto; }
.row { display: flex; flex-wrap: wrap; gap: 18px 28px; align-items: flex-start; }
.row > div { flex: 1 1 320px; min-width: 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12px; background: #fafbfc; border-bottom: 1px solid #d5dae1;
     position: sticky; top: 0; }
td.num, th.num { text-align: right; white-space: nowrap; }
tbody tr:hover { background: #f3f6fb; }
tr.highlight td { background: #fff8e6; }
td.neg { color: var(--neg); }
code, .tok { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
.tok { white-space: pre; background: #f1f3f6; border-radius: 4px; padding: 0 4px; }
.scroll { max-height: 560px; overflow: auto; border: 1px solid var(--line); border-radius: 8px; }
.scroll table th { box-shadow: 0 1px 0 #d5dae1; }
.note { color: var(--muted); font-size: 12.5px; margin: 8px 0 0; }
.pill { display: inline-block; font-size: 11px; padding: 0 7px; border-radius: 9px; background: #eef1f6;
        color: var(--ink); white-space: nowrap; }
.pill.nm { background: #dbe7fb; } .pill.nnm { background: #fbe0dd; } .pill.bnm { background: #e6eefc; }
details { margin-top: 12px; }
details summary { cursor: pointer; color: var(--accent); font-size: 13px; }
.prompt-text { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; background: #f6f7f9;
               border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; overflow-wrap: anywhere; }
.cv-view { margin: 8px 0 14px; min-height: 40px; }
.attn-group { border-top: 1px solid var(--line); margin-top: 10px; padding-top: 2px; }
.row.attn > div { flex: 1 1 440px; }
.cv-view h3, .cv-view h4 { font-size: 13px; }
.narrow { max-width: 760px; margin: 8px 0 0; }
footer { color: var(--faint); font-size: 12px; text-align: center; margin-top: 24px; }
"""
