//! The gateway's legs: their interfaces in `LEGS` and the XDP links on them (pinned, and
//! adopted in place on restart).

use aya::maps::{Array, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;
use portcullis_bpf::object::{ifindex, program, take};
use portcullis_bpf::{map_err, Result};
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
    for ((name, role, pin_name), index) in legs.into_iter().zip(indexes) {
        let prog = program::<Xdp>(ebpf, OBJECT, PROGRAM_GATEWAY)?;
        let pin_path = options.pin_dir.as_ref().map(|d| d.join(pin_name));
        let mut adopted = false;
        match &pin_path {
            Some(path) if path.exists() => {
                // Swap the program inside the existing link: no moment without a program.
                let link = PinnedLink::from_pin(path)?;
                let xdp_link = XdpLink::try_from(FdLink::from(link))?;
                prog.attach_to_link(xdp_link)?;
                pinned_links.push(PinnedLink::from_pin(path)?);
                adopted = true;
                info!(iface = %name, "replaced the program of the pinned XDP link");
            }
            Some(path) => {
                let id = prog.attach_to_if_index(index, mode)?;
                let fd_link = FdLink::try_from(prog.take_link(id)?)?;
                pinned_links.push(fd_link.pin(path)?);
                info!(iface = %name, ?mode, "attached and pinned XDP link");
            }
            None => {
                prog.attach_to_if_index(index, mode)?;
                info!(iface = %name, ?mode, "attached XDP program");
            }
        }
        attached.push(AttachedInterface {
            name: name.clone(),
            ifindex: index,
            role,
            adopted,
        });
    }
    Ok((attached, pinned_links))
}
