//! Messages, conversations and read cursors (being written).
