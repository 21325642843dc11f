//! ZooKeeper: service registry, watched configuration and leader election.
