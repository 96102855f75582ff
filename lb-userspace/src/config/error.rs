//! Config errors that say where (file, line, column), what (the field) and how to fix it.

use std::{fmt, ops::Range, path::Path, path::PathBuf};

/// One problem in a config file. Its `Display` is what an operator sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single place (an I/O error).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field, such as `service[0].vip`.
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}\n  fix: {}", self.problem, self.fix)
    }
}

/// Turns byte offsets into lines and columns for one source text.
pub(crate) struct Locator<'a> {
    pub file: &'a Path,
    pub source: &'a str,
}

impl Locator<'_> {
    /// 1-based line and column of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.source[..offset.min(self.source.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    pub fn error(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = span.map_or((0, 0), |s| self.position(s.start));
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
