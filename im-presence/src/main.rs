//! The presence service binary.

fn main() {}
