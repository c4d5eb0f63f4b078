//! The disturbances: each kind of scheduled event is executed by the engine through the
//! function of its file here. Every event was drawn from the seed beforehand (see
//! `crate::schedule`); what it picks at run time (a thread, a CPU, a library) is mapped onto
//! what exists when it runs, and each returns the outcome line of the event log.

pub mod affinity;
pub mod churn;
pub mod cpuset;
pub mod fallback;
pub mod fork;
pub mod hotplug;
pub mod reload;
pub mod signals;
