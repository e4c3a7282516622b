//! Problems in a config file, each located at the 1-based line and column of the value it
//! is about, and the small helpers every config section shares to read and write values.

use toml::Spanned;

/// One problem in a config file, at a 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A number of seconds within `range`, or a problem at its value.
pub(crate) fn seconds(
    value: Option<&Spanned<u64>>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    name: &str,
    locate: &Locator,
    problems: &mut Vec<Problem>,
) -> std::time::Duration {
    let seconds = value.map_or(default, |value| *value.get_ref());
    if let Some(value) = value.filter(|_| !range.contains(&seconds)) {
        let message = format!("{name} must be from {} to {}", range.start(), range.end());
        problems.push(locate.problem(value.span().start, message));
    }
    std::time::Duration::from_secs(seconds)
}

/// Turns byte offsets into 1-based lines and columns.
pub(crate) struct Locator {
    line_starts: Vec<usize>,
}

impl Locator {
    pub(crate) fn new(text: &str) -> Self {
        let line_starts =
            std::iter::once(0).chain(text.match_indices('\n').map(|(at, _)| at + 1)).collect::<Vec<usize>>();
        Self { line_starts }
    }

    pub(crate) fn line(&self, at: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= at)
    }

    pub(crate) fn problem(&self, at: usize, message: String) -> Problem {
        let line = self.line(at);
        Problem { line, column: at - self.line_starts[line - 1] + 1, message }
    }
}

/// A TOML basic string.
pub(crate) fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}
