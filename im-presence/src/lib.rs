//! The presence service (being written).
