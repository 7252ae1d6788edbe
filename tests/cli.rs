//! The one integration-test binary: runs the real `tally` CLI in temporary folders.

mod bad_data;
mod close;
mod common;
mod corrupt_at_scale;
mod explain;
mod generated;
mod golden;
mod input_types;
mod jobs;
mod operations;
mod properties;
mod report;
mod sharding;
mod verify;
