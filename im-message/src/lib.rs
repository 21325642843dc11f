//! The message service (being written).
