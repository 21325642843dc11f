//! The memory bus (being written).

/// Placeholder.
#[derive(Debug, Default)]
pub struct Memory;

impl Memory {
    /// Placeholder.
    pub fn new() -> Memory {
        Memory
    }
}
