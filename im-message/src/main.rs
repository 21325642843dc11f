//! The message service binary.

fn main() {}
