//! The group service (being written).
