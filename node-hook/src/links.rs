//! The pod veths' tc links: attaching both programs (TCX links, pinned; netlink clsact filters on
//! kernels before 6.6), adopting pinned links in place on restart, detaching.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{qdisc_add_clsact, SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::Ebpf;
use portcullis_bpf::object::{ifindex, program, remove_pin};
use portcullis_bpf::{Error, Result};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::{OBJECT, PROGRAM_DELIVER, PROGRAM_ORIGIN};

/// Pin file prefixes of the two links of an interface: `tc_egress_<ifname>`, `tc_ingress_<ifname>`.
pub(crate) const PIN_EGRESS: &str = "tc_egress_";
const PIN_INGRESS: &str = "tc_ingress_";

/// The two programs of a pod veth and where they go.
const HOOKS: [(&str, TcAttachType); 2] = [
    (PROGRAM_DELIVER, TcAttachType::Egress),
    (PROGRAM_ORIGIN, TcAttachType::Ingress),
];

/// One pod veth with both programs attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttachedInterface {
    pub name: String,
    /// Interface index when attached (in the namespace attach ran in); 0 for links adopted from
    /// pins at load, whose interface this process has not looked up.
    pub ifindex: u32,
    /// True when existing pinned links were taken over (their program replaced in place).
    pub adopted: bool,
}

/// One attached link: held open by this process, pinned or not.
enum HeldLink {
    /// A TCX link (kernel >= 6.6); with `pin` it is also pinned there.
    Tcx { link: FdLink, pin: Option<PathBuf> },
    /// A netlink clsact filter (older kernels): detached through the program, never pinned.
    Netlink {
        program: &'static str,
        id: aya::programs::tc::SchedClassifierLinkId,
    },
}

struct Hooked {
    info: AttachedInterface,
    links: Vec<HeldLink>,
}

fn tc_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    program::<SchedClassifier>(ebpf, OBJECT, name)
}

fn pin_name(attach_type: TcAttachType, ifname: &str) -> String {
    match attach_type {
        TcAttachType::Egress => format!("{PIN_EGRESS}{ifname}"),
        _ => format!("{PIN_INGRESS}{ifname}"),
    }
}

/// The links of every hooked interface.
pub(crate) struct Links {
    pin_dir: Option<PathBuf>,
    tcx: bool,
    hooked: BTreeMap<String, Hooked>,
}

impl Links {
    pub(crate) fn new(pin_dir: Option<PathBuf>, tcx: bool) -> Links {
        Links {
            pin_dir,
            tcx,
            hooked: BTreeMap::new(),
        }
    }

    /// Replaces the program of every pinned link in the pin directory.
    pub(crate) fn adopt_pinned(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        let Some(dir) = self.pin_dir.clone() else {
            return Ok(());
        };
        let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(PIN_EGRESS) || n.starts_with(PIN_INGRESS))
            .collect();
        names.sort();
        for name in names {
            let (ifname, program_name) = match name.strip_prefix(PIN_EGRESS) {
                Some(i) => (i.to_owned(), PROGRAM_DELIVER),
                None => (name[PIN_INGRESS.len()..].to_owned(), PROGRAM_ORIGIN),
            };
            let path = dir.join(&name);
            match adopt_link(ebpf, program_name, &path) {
                Ok(link) => {
                    info!(iface = %ifname, pin = %path.display(), "replaced the program of a pinned tc link");
                    let entry = self.hooked.entry(ifname.clone()).or_insert_with(|| Hooked {
                        info: AttachedInterface {
                            name: ifname,
                            ifindex: 0,
                            adopted: true,
                        },
                        links: Vec::new(),
                    });
                    entry.links.push(link);
                }
                Err(e) => {
                    warn!(pin = %path.display(), error = %e, "dropping a pinned tc link that cannot be adopted");
                    remove_pin(&path)?;
                }
            }
        }
        Ok(())
    }

    /// Attaches both programs to the pod veth `ifname` (host side) of the calling thread's
    /// network namespace: delivery checks on its egress, flow recording on its ingress. Already
    /// attached (or adopted) interfaces are left as they are.
    pub(crate) fn attach(&mut self, ebpf: &mut Ebpf, ifname: &str) -> Result<AttachedInterface> {
        let index = ifindex(ifname)?;
        if let Some(h) = self.hooked.get_mut(ifname) {
            if h.links.len() == HOOKS.len() {
                if h.info.ifindex == 0 {
                    h.info.ifindex = index;
                }
                return Ok(h.info.clone());
            }
            // A half-adopted pair: start over.
            self.detach(ebpf, ifname)?;
        }
        let mut links = Vec::new();
        let mut adopted = false;
        for (program_name, attach_type) in HOOKS {
            let pin = self
                .pin_dir
                .as_ref()
                .map(|d| d.join(pin_name(attach_type, ifname)));
            if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
                match adopt_link(ebpf, program_name, path) {
                    Ok(link) => {
                        links.push(link);
                        adopted = true;
                        continue;
                    }
                    Err(e) => {
                        warn!(pin = %path.display(), error = %e, "stale pinned link replaced");
                        remove_pin(path)?;
                    }
                }
            }
            links.push(self.attach_one(ebpf, program_name, attach_type, ifname, pin)?);
        }
        let info = AttachedInterface {
            name: ifname.to_owned(),
            ifindex: index,
            adopted,
        };
        debug!(iface = ifname, ifindex = index, adopted, "attached");
        self.hooked.insert(
            ifname.to_owned(),
            Hooked {
                info: info.clone(),
                links,
            },
        );
        Ok(info)
    }

    fn attach_one(
        &self,
        ebpf: &mut Ebpf,
        program_name: &'static str,
        attach_type: TcAttachType,
        ifname: &str,
        pin: Option<PathBuf>,
    ) -> Result<HeldLink> {
        let tcx = self.tcx;
        let prog = tc_program(ebpf, program_name)?;
        if !tcx {
            // clsact filters through netlink: the qdisc may already be there.
            if let Err(e) = qdisc_add_clsact(ifname) {
                debug!(iface = ifname, error = %e, "clsact qdisc not added (exists?)");
            }
            let id = prog.attach(ifname, attach_type)?;
            if pin.is_some() {
                warn!(
                    iface = ifname,
                    "kernel without TCX links: the tc filter is not pinned"
                );
            }
            return Ok(HeldLink::Netlink {
                program: program_name,
                id,
            });
        }
        let id = prog.attach_with_options(
            ifname,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        Ok(match pin {
            Some(path) => HeldLink::Tcx {
                link: FdLink::from(link.pin(&path)?),
                pin: Some(path),
            },
            None => HeldLink::Tcx { link, pin: None },
        })
    }

    /// Detaches both programs from `ifname` and removes their pins. Works after the interface is
    /// gone too (its links are then already inert).
    pub(crate) fn detach(&mut self, ebpf: &mut Ebpf, ifname: &str) -> Result<()> {
        let Some(h) = self.hooked.remove(ifname) else {
            return Ok(());
        };
        for link in h.links {
            match link {
                HeldLink::Tcx { link, pin } => {
                    if let Some(path) = pin {
                        remove_pin(&path)?;
                    }
                    // The last reference: closing it detaches the link.
                    drop(link);
                }
                HeldLink::Netlink { program: name, id } => {
                    if let Err(e) = tc_program(ebpf, name)?.detach(id) {
                        debug!(iface = ifname, error = %e, "tc filter already gone");
                    }
                }
            }
        }
        debug!(iface = ifname, "detached");
        Ok(())
    }

    /// The pin file names of the links held for `ifname` (every interface's with `None`).
    pub(crate) fn pin_names(&self, ifname: Option<&str>) -> Vec<String> {
        (self.hooked.iter())
            .filter(|(name, _)| ifname.is_none_or(|i| i == name.as_str()))
            .flat_map(|(_, h)| &h.links)
            .filter_map(|link| match link {
                HeldLink::Tcx {
                    pin: Some(path), ..
                } => path.file_name(),
                _ => None,
            })
            .map(|name| name.to_string_lossy().into_owned())
            .collect()
    }

    pub(crate) fn attached(&self) -> Vec<AttachedInterface> {
        self.hooked.values().map(|h| h.info.clone()).collect()
    }

    /// Removes the pins of every link (they stay attached while this process holds them).
    pub(crate) fn unpin(&mut self) -> Result<()> {
        for h in self.hooked.values_mut() {
            for link in &mut h.links {
                if let HeldLink::Tcx { pin, .. } = link {
                    if let Some(path) = pin.take() {
                        remove_pin(&path)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Interfaces with pinned links under `dir` (from the pin names `tc_egress_<ifname>`).
pub(crate) fn pinned_interfaces(dir: &Path) -> Vec<String> {
    let mut interfaces: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| n.strip_prefix(PIN_EGRESS).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    interfaces.sort();
    interfaces
}

fn adopt_link(ebpf: &mut Ebpf, program_name: &'static str, path: &Path) -> Result<HeldLink> {
    let pinned = PinnedLink::from_pin(path)?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
    let prog = tc_program(ebpf, program_name)?;
    let id = prog.attach_to_link(link)?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    Ok(HeldLink::Tcx {
        link,
        pin: Some(path.to_owned()),
    })
}
