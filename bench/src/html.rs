//! `tidegate bench report`: one self-contained HTML page from the JSON
//! files the scenarios write (`--json`). Each file's kind is told by its
//! fields, not its name (`kinds.rs`); figures across files (memory per
//! connection against N, Tidegate : peer ratios) are in `compare.rs`; the
//! charts are hand-written SVG (`svg.rs`, axes in `svg/axis.rs`); the machine the page was made on
//! comes from /proc (`machine.rs`).
//!
//! Inputs are untrusted: every string from them is HTML-escaped, and odd or
//! missing fields print as "—" or fall back to a generic key/value table,
//! never a panic. The page loads nothing (no script, no external resource,
//! a Content-Security-Policy of `default-src 'none'`): it opens offline.

mod compare;
mod kinds;
mod machine;
pub mod svg;

use anyhow::Context;
use kinds::Kind;
pub use machine::Machine;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Arguments of `tidegate bench report`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// The HTML file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// The page's title.
    #[arg(long, default_value = "Tidegate bench report")]
    pub title: String,
    /// JSON result files of `tidegate bench … --json` (bench/results/*.json).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// One input file: the name it is shown under and its parsed JSON.
#[derive(Debug, Clone)]
pub struct Input {
    /// File name (without its directory).
    pub name: String,
    /// Its content.
    pub value: Value,
}

/// Larger input files are refused: bench's own reports are a few KiB.
const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;
/// Rows of a generic key/value table beyond which the rest is only counted.
const MAX_FIELDS: usize = 2000;
/// Characters of one string value shown; the rest is cut.
const MAX_TEXT: usize = 300;

/// Reads the inputs, renders the page and writes it; returns how many files it covers.
pub fn run(args: &ReportArgs) -> anyhow::Result<usize> {
    let inputs = args
        .inputs
        .iter()
        .map(|p| read_input(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let page = render(&args.title, &inputs, &Machine::current());
    std::fs::write(&args.out, page).with_context(|| format!("writing {}", args.out.display()))?;
    Ok(inputs.len())
}

fn read_input(path: &Path) -> anyhow::Result<Input> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read it", path.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_INPUT_BYTES,
        "{}: {len} bytes is more than the {MAX_INPUT_BYTES} a bench result file can be; give the files `tidegate bench … --json` wrote",
        path.display()
    );
    let text =
        std::fs::read(path).with_context(|| format!("{}: cannot read it", path.display()))?;
    let value = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{}: not JSON; give the files `tidegate bench … --json` wrote",
            path.display()
        )
    })?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(Input { name, value })
}

/// The whole page.
pub fn render(title: &str, inputs: &[Input], machine: &Machine) -> String {
    let mut page = Page::default();
    page.raw(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    ));
    page.tag("h1", title);
    let kinds: Vec<Kind> = inputs.iter().map(|i| Kind::of(&i.value)).collect();
    overview(&mut page, inputs, &kinds);
    compare::sections(&mut page, inputs, &kinds);
    for (i, (input, kind)) in inputs.iter().zip(&kinds).enumerate() {
        kinds::section(&mut page, i, input, *kind);
    }
    machine.section(&mut page, inputs);
    page.raw("</body></html>\n");
    page.0
}

fn overview(page: &mut Page, inputs: &[Input], kinds: &[Kind]) {
    page.tag("h2", "Files");
    let rows = inputs
        .iter()
        .zip(kinds)
        .enumerate()
        .map(|(i, (input, kind))| {
            vec![
                Cell::link(format!("#f-{i}"), input.name.clone()),
                kind.name(&input.value).into(),
                kinds::headline(*kind, &input.value).into(),
            ]
        })
        .collect::<Vec<_>>();
    page.table(&["file", "kind", "headline"], &rows);
}

/// The page under construction. Text goes in through methods that escape it;
/// only [`Page::raw`] takes markup, and only markup this module writes.
#[derive(Default)]
pub struct Page(String);

impl Page {
    /// Markup written by this module (never a string from the inputs).
    fn raw(&mut self, html: &str) {
        self.0.push_str(html);
    }

    /// `<tag>text</tag>` for a fixed tag name, the text escaped.
    fn tag(&mut self, tag: &'static str, text: &str) {
        self.0
            .push_str(&format!("<{tag}>{}</{tag}>\n", escape(text)));
    }

    /// A table: a header row and rows of cells, every cell escaped.
    fn table(&mut self, head: &[&str], rows: &[Vec<Cell>]) {
        self.0.push_str("<table><thead><tr>");
        for h in head {
            self.0.push_str(&format!("<th>{}</th>", escape(h)));
        }
        self.0.push_str("</tr></thead><tbody>\n");
        for row in rows {
            self.0.push_str("<tr>");
            for c in row {
                self.0.push_str(&c.html());
            }
            self.0.push_str("</tr>\n");
        }
        self.0.push_str("</tbody></table>\n");
    }

    /// Flattened fields of `v` as a key/value table (the fallback for any kind).
    fn fields(&mut self, v: &Value) {
        let mut rows = Vec::new();
        let mut left_out = 0usize;
        flatten(v, String::new(), 0, &mut rows, &mut left_out);
        if left_out > 0 {
            rows.push(vec![
                "…".into(),
                format!("{left_out} more fields not shown").into(),
            ]);
        }
        self.table(&["field", "value"], &rows);
    }
}

/// One table cell: escaped text, an optional fixed class, an optional in-page link.
pub struct Cell {
    text: String,
    class: Option<&'static str>,
    href: Option<String>,
}

impl Cell {
    /// A cell with a fixed CSS class (`num`, `good`, `bad`).
    fn with_class(text: impl Into<String>, class: &'static str) -> Cell {
        Cell {
            text: text.into(),
            class: Some(class),
            href: None,
        }
    }

    /// A number, right-aligned.
    fn num(text: impl Into<String>) -> Cell {
        Cell::with_class(text, "num")
    }

    /// A link to an anchor of this page (`#f-3`; built here, never from input).
    fn link(href: String, text: String) -> Cell {
        Cell {
            text,
            class: None,
            href: Some(href),
        }
    }

    fn html(&self) -> String {
        let text = escape(&self.text);
        let inner = match &self.href {
            Some(h) => format!("<a href=\"{}\">{text}</a>", escape(h)),
            None => text,
        };
        match self.class {
            Some(c) => format!("<td class=\"{c}\">{inner}</td>"),
            None => format!("<td>{inner}</td>"),
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell {
            text,
            class: None,
            href: None,
        }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::from(text.to_string())
    }
}

fn flatten(v: &Value, key: String, depth: usize, rows: &mut Vec<Vec<Cell>>, left_out: &mut usize) {
    if rows.len() >= MAX_FIELDS {
        *left_out += 1;
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() && depth < 16 => {
            for (k, v) in m {
                let key = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                flatten(v, key, depth + 1, rows, left_out);
            }
        }
        Value::Array(a) if !a.is_empty() && depth < 16 => {
            for (i, v) in a.iter().enumerate() {
                flatten(v, format!("{key}[{i}]"), depth + 1, rows, left_out);
            }
        }
        _ => {
            let key = if key.is_empty() {
                "(value)".into()
            } else {
                key
            };
            let cell = match v {
                Value::Number(_) => Cell::num(scalar(v)),
                _ => scalar(v).into(),
            };
            rows.push(vec![key.into(), cell]);
        }
    }
}

/// A JSON value as a short line of text.
fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), fmt_num),
        Value::String(s) => cut(s),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(m) if m.is_empty() => "{}".into(),
        // Deeper than the table goes: its JSON, cut.
        other => cut(&other.to_string()),
    }
}

/// At most [`MAX_TEXT`] characters of `s`.
fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// `v` with thousands separators; fractions to three significant digits
/// (two decimals at most); "—" for what is not a finite number.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let a = v.abs();
    if a != 0.0 && !(0.01..1e15).contains(&a) {
        // Tiny or huge: scientific keeps it readable.
        return format!("{v:.2e}");
    }
    let decimals = if a >= 100.0 || v.fract() == 0.0 {
        0
    } else if a >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{a:.decimals$}");
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    let sign = if v < 0.0 { "-" } else { "" };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// The value at `path` under `v` (None where any step is missing or not an object).
fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// The finite number at `path` under `v`.
fn num(v: &Value, path: &[&str]) -> Option<f64> {
    get(v, path)
        .and_then(Value::as_f64)
        .filter(|n| n.is_finite())
}

/// The number at `path` for a table or a headline: grouped, or "—".
fn show(v: &Value, path: &[&str]) -> String {
    num(v, path).map_or_else(|| "—".into(), fmt_num)
}

/// The string at `path` under `v`, cut to a readable length.
fn text(v: &Value, path: &[&str]) -> Option<String> {
    get(v, path).and_then(Value::as_str).map(cut)
}

/// `s` safe in HTML text and in a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than whitespace are not valid HTML text.
            c if c.is_control() && !matches!(c, '\n' | '\t') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{margin-bottom:.3em}\
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}\
td.good{background:#e3f4e3}td.bad{background:#fbe3e3}\
section{margin-bottom:2em}.kind{font-size:.75em;background:#eef;padding:1px 6px;border-radius:3px;vertical-align:middle}\
.note{color:#555}svg.chart{display:block;margin:.5em 0;max-width:100%;height:auto;font:11px system-ui,sans-serif}\
svg .title{font-weight:bold;font-size:13px}details{margin:.5em 0}";

#[cfg(test)]
mod tests;
