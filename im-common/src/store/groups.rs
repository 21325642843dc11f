//! Groups and their members (being written).
