//! kvd-check: a verifying client, a disturbance driver and a closed-loop load generator for
//! memcached-protocol servers (the workspace's `kvd` on each of its stacks, and memcached).

pub mod bench;
pub mod client;
pub mod disturb;
pub mod rng;
pub mod server;
pub mod storebench;
pub mod verify;
