//! Pure NetworkPolicy logic for Portcullis: the model ([`model`]), loading and validation
//! ([`load`]), the exact evaluator ([`eval`]), probes ([`probe`]), and the compiler to the gateway's
//! kernel tables ([`compile`]). No I/O anywhere: everything is unit- and property-tested without a
//! kernel, and the evaluator is the oracle the kernel datapath is checked against.

pub mod audit;
pub mod compile;
pub mod egress;
pub mod eval;
pub mod explain;
pub mod graph;
pub mod load;
pub mod model;
pub mod probe;
pub mod service;
pub mod synth;
#[cfg(feature = "testing")]
pub mod testing;
