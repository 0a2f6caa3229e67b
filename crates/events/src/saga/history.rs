//! A saga's history: what happened to it, one JSON object per line in its row's `history`
//! column.
//!
//! Each line is appended by the statement that moves the saga (`history = history || $n`,
//! the same in SQLite and PostgreSQL), so the history costs no statement of its own and can
//! never disagree with the saga's state: a move and its line commit together or not at all.
//! It is what the console draws as the saga's timeline; the spans of the saga's trace tell
//! the same story with timings, but they are sampled and pruned, and this is neither.

use serde::{Deserialize, Serialize};

use crate::Tx;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The step's command was sent.
    Command,
    /// The step's participant answered ok.
    Ok,
    /// The step's participant answered failed (`reason`).
    Failed,
    /// The step got no answer in time.
    Timeout,
    /// The step's compensation was sent.
    Compensate,
    /// Every step succeeded.
    Completed,
    /// An answer came for a step the saga no longer waited on (`reason`: its outcome).
    LateReply,
    /// An operator sent the step's command again (`by`).
    Retry,
    /// An operator compensated the saga (`by`).
    Abort,
}

/// One line of a saga's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix milliseconds.
    pub at: i64,
    pub action: Action,
    /// The step it concerns (empty for the saga as a whole).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who did it, for an operator's action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Entry {
    pub(super) fn at(at: i64, action: Action, step: &str) -> Self {
        Self {
            at,
            action,
            step: step.to_string(),
            reason: None,
            by: None,
        }
    }

    pub(super) fn reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    pub(super) fn by(mut self, by: &str) -> Self {
        self.by = Some(by.to_string());
        self
    }

    /// The entry as a line of the column.
    pub(super) fn line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("an entry serializes");
        line.push('\n');
        line
    }
}

/// The entries of a `history` column (a line that does not parse is skipped: the column is
/// only ever written here).
pub fn parse(column: &str) -> Vec<Entry> {
    column
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Appends `lines` to saga `id`'s history, for a move that changes nothing else.
pub(super) async fn append(
    tx: &mut Tx,
    id: &str,
    lines: &str,
) -> Result<(), tessera_store::DbError> {
    tessera_store::query("UPDATE tessera_sagas SET history = history || $2 WHERE id = $1")
        .bind(id)
        .bind(lines)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_back_as_they_were_written() {
        let written = [
            Entry::at(1, Action::Command, "reserve"),
            Entry::at(2, Action::Failed, "reserve").reason("out of stock\nreally"),
            Entry::at(3, Action::Abort, "").by("admin"),
        ];
        let column: String = written.iter().map(Entry::line).collect();
        assert_eq!(
            column.lines().count(),
            3,
            "a reason's newline stays escaped"
        );
        assert_eq!(parse(&column), written);
        assert!(column.contains(r#""action":"abort""#));
        assert!(!column.contains(r#""step":"""#), "no empty step written");
        assert_eq!(parse("not json\n"), []);
    }
}
