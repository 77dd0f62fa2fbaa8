//! `lazycrypt bench`: cold-start benchmarks of encrypted images, run the
//! same way on every machine: generated workloads, a loopback registry, and
//! each way of starting a container side by side.

pub mod coldstart;
pub mod node;
pub mod report;
pub mod stop;
pub mod workload;
