//! The one integration-test binary: runs the real `tally` CLI in temporary folders.

mod common;
mod golden;
