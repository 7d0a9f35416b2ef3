pub mod compile;
pub mod model;
