//! What every training shares (`roundtrip train`, `roundtrip train-clip`, and the next one): the
//! epoch loop ([`driver`]), the resumable Adam(W) ([`adam`]), and the model folder with its
//! checkpoint ([`checkpoint`]). Each training keeps its own model, data and log line, and plugs
//! them in through [`driver::Trainer`].

pub mod adam;
pub mod checkpoint;
pub mod driver;

pub use adam::Adam;
pub use checkpoint::{ModelDir, CHECKPOINT};
pub use driver::{BestCounter, Driver, Finished, Outcome, Plan, Trainer};
