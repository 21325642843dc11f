//! The user service binary.

fn main() {}
