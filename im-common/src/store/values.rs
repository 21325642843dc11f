//! What the tables' code shares: ids as SQL integers and back, and the `?` lists that
//! statements of many values are built from.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::StoreError;

/// An id as the signed integer SQL stores (ids stay far below `i64::MAX`).
pub(crate) fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An id column read back; a negative one is corrupt data.
pub(crate) fn u64_of(row: &AnyRow, column: &str) -> Result<u64, StoreError> {
    let value: i64 = row.try_get(column)?;
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {column}")))
}

/// `?, ?, …` for `n` values.
pub(crate) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `(?, ?, …), (?, ?, …), …`: `rows` rows of `columns` values.
pub(crate) fn row_marks(rows: usize, columns: usize) -> String {
    vec![format!("({})", marks(columns)); rows].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_marks() {
        assert_eq!(marks(3), "?, ?, ?");
        assert_eq!(row_marks(2, 2), "(?, ?), (?, ?)");
        assert_eq!(i64_of(u64::MAX), i64::MAX);
    }
}
