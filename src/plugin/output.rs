//! `--output`: a human table by default, or JSON/YAML for scripts; tables and ages as kubectl
//! prints them.

use std::io::Write;

use clap::{Args, ValueEnum};
use jiff::Timestamp;
use serde::Serialize;

use super::Error;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Writes `value` as JSON or YAML; `Ok(false)` for the table format, which the caller prints.
pub fn structured<T: Serialize>(
    format: Output,
    value: &T,
    out: &mut (dyn Write + Send),
) -> Result<bool, Error> {
    match format {
        Output::Table => Ok(false),
        Output::Json => {
            let text =
                serde_json::to_string_pretty(value).map_err(|e| Error::Output(e.to_string()))?;
            writeln!(out, "{text}")?;
            Ok(true)
        }
        Output::Yaml => {
            let text = serde_saphyr::to_string(value).map_err(|e| Error::Output(e.to_string()))?;
            write!(out, "{text}")?;
            Ok(true)
        }
    }
}

/// Rows as aligned columns, two spaces apart, like `kubectl get`.
pub fn table(
    header: &[&str],
    rows: &[Vec<String>],
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == last {
                    c.to_string()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// Time since `then`, in kubectl's short form: `42s`, `5m`, `3h`, `12d`.
pub fn age(then: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `-` for an absent cell, as kubectl prints `<none>` more tersely.
pub fn cell(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("-").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now: Timestamp = "2026-01-10T00:00:00Z".parse().unwrap();
        let ago = |s: i64| Timestamp::from_second(now.as_second() - s).unwrap();
        assert_eq!(age(ago(5), now), "5s");
        assert_eq!(age(ago(300), now), "5m");
        assert_eq!(age(ago(3 * 3600), now), "3h");
        assert_eq!(age(ago(5 * 86400), now), "5d");
        assert_eq!(age(ago(-10), now), "0s");
    }

    #[test]
    fn table_columns_are_aligned_to_the_widest_cell() {
        let mut out = Vec::new();
        table(
            &["A", "B"],
            &[
                vec!["long-cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A          B\nlong-cell  x\ny          z\n"
        );
    }
}
