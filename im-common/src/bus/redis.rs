//! The redis bus (being written).
