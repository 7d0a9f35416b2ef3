//! The gateway's legs: their interfaces in `LEGS` and the XDP links on them (pinned, and
//! adopted in place on restart).

use aya::maps::{Array, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::{XdpLink, XdpLinkId};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;
use portcullis_bpf::object::{ifindex, program, take};
use portcullis_bpf::{map_err, Error, Result};
use portcullis_common::*;
use serde::Serialize;
use tracing::info;

use crate::{GatewayOptions, LINK_PINS, OBJECT, PROGRAM_GATEWAY};

/// How the program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Driver (native) XDP.
    #[default]
    Native,
    /// Generic (skb) XDP; slower, for devices without native support.
    Generic,
}

/// One attached leg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    /// `ROLE_CLUSTER` or `ROLE_EXTERNAL`.
    pub role: u32,
    /// True when an existing pinned link was taken over (its original attach mode is kept).
    pub adopted: bool,
}

/// Writes the legs into `LEGS` and attaches the program to both legs.
pub(crate) fn attach_legs(
    ebpf: &mut Ebpf,
    options: &GatewayOptions,
) -> Result<(Vec<AttachedInterface>, Vec<PinnedLink>)> {
    let legs = [
        (&options.cluster_iface, ROLE_CLUSTER, LINK_PINS[0]),
        (&options.external_iface, ROLE_EXTERNAL, LINK_PINS[1]),
    ];
    let indexes = [ifindex(legs[0].0)?, ifindex(legs[1].0)?];
    let mut map: Array<MapData, Legs> = take(ebpf, OBJECT, MAP_LEGS)?;
    let value = Legs {
        cluster: indexes[0],
        external: indexes[1],
    };
    map.set(0, value, 0).map_err(map_err(MAP_LEGS))?;
    let mode = match options.xdp_mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Generic => XdpMode::Skb,
    };
    let mut attached = Vec::new();
    let mut pinned_links = Vec::new();
    // Links this call attached (not adopted): detached again if a later leg fails, so a refused
    // start leaves nothing half-attached.
    let mut created: Vec<Created> = Vec::new();
    for ((name, role, pin_name), index) in legs.into_iter().zip(indexes) {
        let leg = attach_leg(ebpf, options, (name, pin_name, index), mode, &mut created);
        let (adopted, pinned) = match leg {
            Ok(leg) => leg,
            Err(e) => {
                rollback(ebpf, created);
                return Err(e);
            }
        };
        pinned_links.extend(pinned);
        attached.push(AttachedInterface {
            name: name.clone(),
            ifindex: index,
            role,
            adopted,
        });
    }
    Ok((attached, pinned_links))
}

/// A link [`attach_leg`] made: its pin, or its id in the program when not pinned.
enum Created {
    Pinned(std::path::PathBuf),
    Unpinned(XdpLinkId),
}

fn rollback(ebpf: &mut Ebpf, created: Vec<Created>) {
    for link in created {
        match link {
            // The pinned link is released when its pin goes and its last descriptor closes.
            Created::Pinned(path) => {
                let _ = std::fs::remove_file(path);
            }
            Created::Unpinned(id) => {
                if let Ok(prog) = program::<Xdp>(ebpf, OBJECT, PROGRAM_GATEWAY) {
                    let _ = prog.detach(id);
                }
            }
        }
    }
}

/// The kernel's answer when an XDP program is attached to the interface already.
fn busy(error: &aya::programs::ProgramError) -> bool {
    matches!(error, aya::programs::ProgramError::SyscallError(e)
        if e.io_error.raw_os_error() == Some(libc::EBUSY))
}

/// Attaches (or adopts) one leg: whether it was adopted, and its pinned link.
fn attach_leg(
    ebpf: &mut Ebpf,
    options: &GatewayOptions,
    (name, pin_name, index): (&String, &str, u32),
    mode: XdpMode,
    created: &mut Vec<Created>,
) -> Result<(bool, Option<PinnedLink>)> {
    let native = |source| match options.xdp_mode {
        _ if busy(&source) => Error::InterfaceBusy {
            iface: name.clone(),
        },
        AttachMode::Native => Error::NativeXdp {
            iface: name.clone(),
            source,
        },
        AttachMode::Generic => Error::Program(source),
    };
    let prog = program::<Xdp>(ebpf, OBJECT, PROGRAM_GATEWAY)?;
    let pin_path = options.pin_dir.as_ref().map(|d| d.join(pin_name));
    match &pin_path {
        Some(path) if path.exists() => {
            // Swap the program inside the existing link: no moment without a program.
            let link = PinnedLink::from_pin(path)?;
            let xdp_link = XdpLink::try_from(FdLink::from(link))?;
            prog.attach_to_link(xdp_link)?;
            info!(iface = %name, "replaced the program of the pinned XDP link");
            Ok((true, Some(PinnedLink::from_pin(path)?)))
        }
        Some(path) => {
            let id = prog.attach_to_if_index(index, mode).map_err(native)?;
            let fd_link = FdLink::try_from(prog.take_link(id)?)?;
            let pinned = fd_link.pin(path)?;
            created.push(Created::Pinned(path.clone()));
            info!(iface = %name, ?mode, "attached and pinned XDP link");
            Ok((false, Some(pinned)))
        }
        None => {
            let id = prog.attach_to_if_index(index, mode).map_err(native)?;
            created.push(Created::Unpinned(id));
            info!(iface = %name, ?mode, "attached XDP program");
            Ok((false, None))
        }
    }
}
