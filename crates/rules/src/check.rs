//! Checking a rule's source without installing it (`POST /v1/rules/check`, the lab's editor):
//! the compile errors an upload would get, each with line and column, and as warnings the
//! fields of `user` and `event` the rule reads that do not exist (they read as `()` at run
//! time, so a misspelt field silently never matches).

use rhai::{ASTNode, Expr, Position, AST};
use serde::Serialize;

use super::view::{EVENT_FIELDS, USER_FIELDS, USER_MAPS};
use super::{RuleErrorInfo, Rules};

/// One problem at a place in the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// 1-based; None when the problem has no single place.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Compile errors (Rhai stops at the first one; an invalid `ON` is one too).
    pub errors: Vec<Problem>,
    /// Reads of fields that do not exist.
    pub warnings: Vec<Problem>,
    /// The event types the rule reacts to (`const ON`), when it compiles and declares them.
    pub on: Option<Vec<String>>,
}

impl Rules {
    /// Checks `source` as an upload would be compiled (the same sandboxed engine and limits),
    /// without installing anything.
    pub fn check_source(&self, source: &str) -> CheckReport {
        let kind = self.inner.kind();
        let file = "rule.rhai";
        match kind.compile_rule(file, source) {
            Err(e) => CheckReport {
                errors: vec![problem(e, source)],
                warnings: Vec::new(),
                on: None,
            },
            Ok((ast, on, _)) => CheckReport {
                errors: Vec::new(),
                warnings: unknown_fields(&ast),
                on,
            },
        }
    }
}

/// A compile error as a problem; an error without a position that is about `ON` gets the
/// line of the `ON` declaration.
fn problem(e: RuleErrorInfo, source: &str) -> Problem {
    let (line, column) = match (e.line, e.column) {
        (Some(l), c) => (Some(l), c),
        (None, _) if e.message.starts_with("ON ") => source
            .lines()
            .position(|l| l.trim_start().starts_with("const ON"))
            .map_or((None, None), |i| {
                let col = source
                    .lines()
                    .nth(i)
                    .map_or(1, |l| l.len() - l.trim_start().len() + 1);
                (Some(i + 1), Some(col))
            }),
        _ => (None, None),
    };
    Problem {
        line,
        column,
        message: e.message,
    }
}

fn at(pos: Position, message: String) -> Problem {
    Problem {
        line: pos.line(),
        column: pos.position(),
        message,
    }
}

/// The name and position of a property expression.
fn property(e: &Expr) -> Option<(&str, Position)> {
    match e {
        Expr::Property(p, pos) => Some((p.2.as_str(), *pos)),
        _ => None,
    }
}

/// `user.x`, `user.x.y` (for the maps whose keys are fixed) and `event.x` reads of fields
/// that do not exist.
fn unknown_fields(ast: &AST) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let Some(ASTNode::Expr(Expr::Dot(x, _, _))) = path.last() else {
            return true;
        };
        let Expr::Variable(v, _, _) = &x.lhs else {
            return true;
        };
        let var = v.1.as_str();
        let (first, rest) = match &x.rhs {
            Expr::Dot(y, _, _) => (property(&y.lhs), Some(&y.rhs)),
            other => (property(other), None),
        };
        let Some((name, pos)) = first else {
            return true; // a method call: `user.hour()`
        };
        match var {
            "user" if !USER_FIELDS.contains(&name) => out.push(at(
                pos,
                format!(
                    "user.{name} does not exist (it reads as ()); user has {}",
                    USER_FIELDS.join(", ")
                ),
            )),
            "user" => {
                let inner = rest.and_then(|r| match r {
                    Expr::Dot(z, _, _) => property(&z.lhs),
                    other => property(other),
                });
                if let (Some((_, keys)), Some((sub, pos))) =
                    (USER_MAPS.iter().find(|(m, _)| *m == name), inner)
                {
                    if !keys.contains(&sub) {
                        out.push(at(
                            pos,
                            format!(
                                "user.{name}.{sub} does not exist (it reads as ()); user.{name} has {}",
                                keys.join(", ")
                            ),
                        ));
                    }
                }
            }
            "event" if !EVENT_FIELDS.contains(&name) => out.push(at(
                pos,
                format!(
                    "event.{name} does not exist (it reads as ()); event has {} (the event's own fields are in event.props)",
                    EVENT_FIELDS.join(", ")
                ),
            )),
            _ => {}
        }
        true
    });
    out.sort_by_key(|p| (p.line, p.column));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuleLimits;

    fn rules() -> (tempfile::TempDir, Rules) {
        let d = tempfile::tempdir().unwrap();
        let r = Rules::load(d.path(), RuleLimits::default()).unwrap();
        (d, r)
    }

    #[test]
    fn errors_have_line_and_column_and_warnings_name_the_missing_fields() {
        let (_d, r) = rules();
        let ok = r.check_source(
            "const ON = [\"scroll\"];\nif user.scroll.depth > 75.0 && user.hour() > 3 && event.props.x == 1 {\n  adjust(\"a\", \"b\", #{});\n}",
        );
        assert_eq!(ok.errors, vec![]);
        assert_eq!(ok.warnings, vec![]);
        assert_eq!(ok.on, Some(vec!["scroll".to_string()]));
        let bad = r.check_source("let x = 1;\nlet y = ;\n");
        assert_eq!(bad.errors.len(), 1);
        assert_eq!(
            (bad.errors[0].line, bad.errors[0].column),
            (Some(2), Some(9))
        );
        let on = r.check_source("// rule\n  const ON = [\"scrol\"];\n");
        assert_eq!((on.errors[0].line, on.errors[0].column), (Some(2), Some(3)));
        assert!(on.errors[0].message.contains("scrol"), "{:?}", on.errors);
        let w = r.check_source(
            "if user.scrol.depth > 1.0 { return; }\nlet d = user.scroll?.dpeth ?? 0.0;\nif event.kind == \"x\" || user.page == \"/\" { return; }\nlet z = user.context.hour;",
        );
        assert_eq!(w.errors, vec![]);
        let lines: Vec<(Option<usize>, &str)> = w
            .warnings
            .iter()
            .map(|p| (p.line, p.message.split(' ').next().unwrap()))
            .collect();
        assert_eq!(
            lines,
            [
                (Some(1), "user.scrol"),
                (Some(2), "user.scroll.dpeth"),
                (Some(3), "event.kind")
            ]
        );
    }
}
