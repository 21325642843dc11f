//! The user service (being written).
