//! Reading feature files for the offline `trimtab segment` command: CSV with a header of
//! numeric columns, or JSONL whose lines are arrays of numbers or objects of numbers.
//!
//! Pure parsing over a string (plus one file read in [`read_features`]); runs on the CLI's main
//! thread. Columns/keys named `id`, `user` or `user_id` are skipped (so exports can carry a key);
//! every other value must be a finite number, and every row must have the same columns. Errors
//! name the line (1-based) and the column.

use std::path::Path;

use serde_json::Value;

use super::{Matrix, SegError};

/// Column names that identify a row rather than describe it.
const ID_COLUMNS: [&str; 3] = ["id", "user", "user_id"];

fn is_id(name: &str) -> bool {
    ID_COLUMNS.contains(&name.to_ascii_lowercase().as_str())
}

/// Reads a CSV (`.csv`) or JSONL (`.jsonl`, `.ndjson`, `.json`, or content starting with `[`
/// or `{`) file of feature rows. Returns the matrix and the column names.
pub fn read_features(path: &Path) -> Result<(Matrix, Vec<String>), SegError> {
    let text = std::fs::read_to_string(path).map_err(|source| SegError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let first = text.trim_start().chars().next();
    match ext.as_str() {
        "csv" => parse_csv(&text),
        "jsonl" | "ndjson" | "json" => parse_jsonl(&text),
        _ if matches!(first, Some('[') | Some('{')) => parse_jsonl(&text),
        _ => parse_csv(&text),
    }
}

/// Parses CSV text: a header line, then one numeric row per line (blank lines skipped).
pub fn parse_csv(text: &str) -> Result<(Matrix, Vec<String>), SegError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or(SegError::EmptyInput)?;
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .collect();
    let keep: Vec<bool> = cols.iter().map(|c| !is_id(c)).collect();
    let names: Vec<String> = cols
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(c, _)| c.clone())
        .collect();
    if names.is_empty() {
        return Err(SegError::Parse {
            line: 1,
            message: "the header names no feature column".into(),
        });
    }
    let mut data = Vec::new();
    let mut n = 0;
    for (ln, line) in lines {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != cols.len() {
            return Err(SegError::Parse {
                line: ln + 1,
                message: format!("{} cells, the header has {}", cells.len(), cols.len()),
            });
        }
        for ((cell, name), &k) in cells.iter().zip(&cols).zip(&keep) {
            if !k {
                continue;
            }
            let v = cell.trim().trim_matches('"');
            data.push(number(v.parse::<f64>().ok(), ln + 1, name, v)?);
        }
        n += 1;
    }
    if n == 0 {
        return Err(SegError::EmptyInput);
    }
    let d = names.len();
    Ok((Matrix::new(n, d, data)?, names))
}

fn number(v: Option<f64>, line: usize, col: &str, raw: &str) -> Result<f32, SegError> {
    match v {
        Some(x) if x.is_finite() && x.abs() < f64::from(f32::MAX) => Ok(x as f32),
        _ => Err(SegError::Parse {
            line,
            message: format!("column {col}: {raw:?} is not a finite number"),
        }),
    }
}

/// Parses JSONL: each non-blank line an array of numbers (columns `f0`, `f1`, …) or an object
/// whose keys are the columns (the first object's keys, sorted, define them).
pub fn parse_jsonl(text: &str) -> Result<(Matrix, Vec<String>), SegError> {
    let mut names: Option<Vec<String>> = None;
    let mut data = Vec::new();
    let mut n = 0;
    for (ln, line) in text.lines().enumerate() {
        let line_no = ln + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| SegError::Parse {
            line: line_no,
            message: format!("invalid JSON: {e}"),
        })?;
        match v {
            Value::Array(items) => {
                let cols = names
                    .get_or_insert_with(|| (0..items.len()).map(|j| format!("f{j}")).collect());
                if items.len() != cols.len() {
                    return Err(SegError::Parse {
                        line: line_no,
                        message: format!("{} values, expected {}", items.len(), cols.len()),
                    });
                }
                for (j, it) in items.iter().enumerate() {
                    data.push(number(it.as_f64(), line_no, &cols[j], &it.to_string())?);
                }
            }
            Value::Object(map) => {
                let cols = names.get_or_insert_with(|| {
                    let mut k: Vec<String> = map.keys().filter(|k| !is_id(k)).cloned().collect();
                    k.sort();
                    k
                });
                let features = map.keys().filter(|k| !is_id(k)).count();
                if features != cols.len() {
                    return Err(SegError::Parse {
                        line: line_no,
                        message: format!("{features} feature keys, expected {}", cols.len()),
                    });
                }
                for c in cols.iter() {
                    let it = map.get(c).ok_or_else(|| SegError::Parse {
                        line: line_no,
                        message: format!("missing key {c}"),
                    })?;
                    data.push(number(it.as_f64(), line_no, c, &it.to_string())?);
                }
            }
            _ => {
                return Err(SegError::Parse {
                    line: line_no,
                    message: "expected an array or an object of numbers".into(),
                })
            }
        }
        n += 1;
    }
    let names = names.ok_or(SegError::EmptyInput)?;
    if names.is_empty() {
        return Err(SegError::Parse {
            line: 1,
            message: "rows have no feature values".into(),
        });
    }
    Ok((Matrix::new(n, names.len(), data)?, names))
}

/// Writes rows as CSV text with a header (used by the benchmark to hand data to scikit-learn).
pub fn to_csv(x: &Matrix, names: &[String]) -> String {
    let mut s = names.join(",");
    s.push('\n');
    for i in 0..x.n {
        let row: Vec<String> = x.row(i).iter().map(|v| v.to_string()).collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_jsonl() {
        let (m, names) = parse_csv("user,a,b\nu1,1,2.5\n\nu2,3,-4\n").unwrap();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(
            (m.n, m.d, m.data.clone()),
            (2, 2, vec![1.0, 2.5, 3.0, -4.0])
        );
        let err = parse_csv("a,b\n1,x\n").unwrap_err();
        assert!(err.to_string().contains("line 2") && err.to_string().contains("column b"));
        assert!(matches!(
            parse_csv("a,b\n1\n"),
            Err(SegError::Parse { line: 2, .. })
        ));

        let (m, names) = parse_jsonl("[1, 2]\n[3, 4]\n").unwrap();
        assert_eq!(
            (names, m.data),
            (
                vec!["f0".to_string(), "f1".into()],
                vec![1.0, 2.0, 3.0, 4.0]
            )
        );
        let (m, names) =
            parse_jsonl("{\"b\":1,\"a\":2,\"id\":\"x\"}\n{\"a\":3,\"b\":4}\n").unwrap();
        assert_eq!(
            (names, m.data),
            (vec!["a".to_string(), "b".into()], vec![2.0, 1.0, 3.0, 4.0])
        );
        assert!(matches!(
            parse_jsonl("{\"a\":1}\n{\"c\":1}\n"),
            Err(SegError::Parse { line: 2, .. })
        ));
        assert!(matches!(
            parse_jsonl("[1, null]\n"),
            Err(SegError::Parse { line: 1, .. })
        ));
        assert!(matches!(parse_jsonl("\n"), Err(SegError::EmptyInput)));
    }
}
