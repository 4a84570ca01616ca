//! Where the models run: `--device cpu|cuda|metal|auto`.
//!
//! GPU support is compiled in by the `cuda` (NVIDIA) or `metal` (Apple) cargo features, passed
//! through to candle. Off the CPU every model takes its portable path (plain candle ops, see
//! [`crate::kernels::native_kernels`]); the hand-written kernels are CPU-only.

use std::str::FromStr;

use candle_core::{Device, DeviceLocation};

use crate::input_err;

/// A device as asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    Metal,
    /// The first GPU this build supports and finds, else the CPU.
    #[default]
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "metal" => Ok(Self::Metal),
            "auto" => Ok(Self::Auto),
            _ => Err(format!("`{s}`: expected cpu, cuda, metal or auto")),
        }
    }
}

/// Opens the chosen device. Asking for a backend this build lacks is an input error that says
/// how to build it; `auto` falls back to the CPU (with a line on stderr when a GPU backend is
/// compiled in but no device opens).
pub fn open(choice: DeviceChoice) -> anyhow::Result<Device> {
    let missing = |name: &str, feature: &str| {
        input_err!(
            "--device {name}: this roundtrip was built without {name} support; build it with \
             `cargo build --release --features {feature}`"
        )
    };
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if !candle_core::utils::cuda_is_available() => {
            Err(missing("cuda", "cuda"))
        }
        DeviceChoice::Metal if !candle_core::utils::metal_is_available() => {
            Err(missing("metal", "metal"))
        }
        DeviceChoice::Cuda => Device::new_cuda(0)
            .map_err(|e| input_err!("--device cuda: no CUDA device could be opened: {e}")),
        DeviceChoice::Metal => Device::new_metal(0)
            .map_err(|e| input_err!("--device metal: no Metal device could be opened: {e}")),
        DeviceChoice::Auto => {
            let gpu = if candle_core::utils::cuda_is_available() {
                Some(("cuda", Device::new_cuda(0)))
            } else if candle_core::utils::metal_is_available() {
                Some(("metal", Device::new_metal(0)))
            } else {
                None
            };
            match gpu {
                Some((_, Ok(d))) => Ok(d),
                Some((name, Err(e))) => {
                    crate::stderr::warning(format_args!(
                        "--device auto: no {name} device ({e}); running on the CPU"
                    ));
                    Ok(Device::Cpu)
                }
                None => Ok(Device::Cpu),
            }
        }
    }
}

/// The device named by the `ROUNDTRIP_DEVICE` environment variable (default `cpu`), for the
/// benchmarks: `ROUNDTRIP_DEVICE=cuda python3 benches/table.py` on a GPU build.
pub fn from_env() -> anyhow::Result<Device> {
    let name = std::env::var("ROUNDTRIP_DEVICE").unwrap_or_else(|_| "cpu".into());
    let choice = name
        .parse()
        .map_err(|e| input_err!("ROUNDTRIP_DEVICE: {e}"))?;
    open(choice).map_err(|e| input_err!("ROUNDTRIP_DEVICE={name}: {e}"))
}

/// `cpu`, `cuda:0`, `metal:0`: recorded in reports.
pub fn label(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_names_and_refuses_others() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda));
        assert_eq!("metal".parse(), Ok(DeviceChoice::Metal));
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        let e = "gpu".parse::<DeviceChoice>().unwrap_err();
        assert!(
            e.contains("`gpu`") && e.contains("cpu, cuda, metal or auto"),
            "{e}"
        );
    }

    #[test]
    fn cpu_and_auto_open_without_a_gpu_backend() {
        assert_eq!(label(&open(DeviceChoice::Cpu).unwrap()), "cpu");
        if !candle_core::utils::cuda_is_available() && !candle_core::utils::metal_is_available() {
            assert_eq!(label(&open(DeviceChoice::Auto).unwrap()), "cpu");
            let e = open(DeviceChoice::Cuda).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2);
            assert!(e.to_string().contains("--features cuda"), "{e}");
            let e = open(DeviceChoice::Metal).unwrap_err();
            assert!(e.to_string().contains("--features metal"), "{e}");
        }
    }
}
