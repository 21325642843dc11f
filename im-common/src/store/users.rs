//! Users, sessions, friends and blocks (being written).
