//! The group service binary.

fn main() {}
