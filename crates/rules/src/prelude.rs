//! A rule's constant prelude, evaluated once at compile time instead of on every run.
//!
//! Rules start with declarations such as `const ON = ["scroll"]; const SLOT = "offer";`. Rhai's
//! optimiser already replaces every use of such a constant with its literal value, but it keeps
//! the declarations, so each run still built the `ON` array and pushed every constant into the
//! scope — about a thousand instructions per rule run, as much as a short rule's own work. This
//! drops the leading run of literal `const` declarations from the compiled AST when nothing in
//! the script refers to them by name any more.
//!
//! Only a *leading* run is dropped: Rhai addresses a script's variables by their distance from
//! the top of the scope, which declarations before all others do not change. A constant still
//! referred to by name (the optimiser could not inline it), or any use of `is_def_var` (which
//! looks names up at run time), keeps the prelude as written.

use std::collections::HashSet;

use rhai::{ASTFlags, ASTNode, Expr, Stmt, AST};

/// `ast` without its leading constant declarations, where that changes nothing a script can
/// observe; else `ast` unchanged.
pub(crate) fn strip(ast: AST) -> AST {
    let statements = ast.statements();
    let lead = statements
        .iter()
        .take_while(|s| match s {
            Stmt::Var(x, flags, _) => flags.contains(ASTFlags::CONSTANT) && x.1.is_constant(),
            _ => false,
        })
        .count();
    if lead == 0 {
        return ast;
    }
    let names: HashSet<&str> = statements[..lead]
        .iter()
        .filter_map(|s| match s {
            Stmt::Var(x, ..) => Some(x.0.as_str()),
            _ => None,
        })
        .collect();
    let mut still_named = false;
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Expr(Expr::Variable(x, ..))) if names.contains(x.1.as_str()) => {
                still_named = true;
            }
            Some(ASTNode::Expr(Expr::FnCall(f, _)) | ASTNode::Stmt(Stmt::FnCall(f, _)))
                if f.name == "is_def_var" =>
            {
                still_named = true;
            }
            _ => {}
        }
        !still_named
    });
    if still_named {
        return ast;
    }
    let rest: Vec<Stmt> = statements[lead..].to_vec();
    let mut stripped = AST::new(rest, ast.shared_lib().clone());
    if let Some(src) = ast.source() {
        stripped.set_source(src.to_owned());
    }
    stripped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(src: &str) -> AST {
        rhai::Engine::new().compile(src).expect("compiles")
    }

    #[test]
    fn only_a_leading_run_of_unreferenced_literal_constants_is_dropped() {
        let ast = strip(compiled(r#"const ON = ["x"]; const S = "s"; let a = S; a"#));
        assert_eq!(ast.statements().len(), 2, "ON and S inlined and dropped");
        let ast = strip(compiled(r#"let a = 1; const S = "s"; a"#));
        assert_eq!(ast.statements().len(), 3, "no leading constant");
        let ast = strip(compiled(r#"const S = "s"; let n = "S"; is_def_var(n)"#));
        assert_eq!(ast.statements().len(), 3, "looked up by name at run time");
        let ast = strip(compiled(r#"const T = [1, 2]; T.len()"#));
        assert_eq!(
            ast.statements().len(),
            2,
            "a method call on it keeps it by name"
        );
    }
}
