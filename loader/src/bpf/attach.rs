//! Bringing the XDP program onto the interface: adopt this instance's pinned
//! program if it is exactly the one we would load, replace it atomically
//! through its pinned link if not, attach fresh if there is none — and refuse
//! if a program this instance does not own holds the interface.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use aya::maps::{Array, Map, MapData, MapError, XskMap};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, EbpfError, EbpfLoader};
use tracing::{info, warn};
use xdpdns_common::config::XdpMode as ConfigMode;
use xdpdns_common::maps::{
    GLOBAL_FWD_PORT_LO, GLOBAL_FWD_PORTS, GLOBAL_MAX_FRAME_LEN, ListenStat, MAP_ACL, MAP_ACL_FAST,
    MAP_BACKENDS_V4, MAP_BACKENDS_V6, MAP_BLOCK_HITS, MAP_DEST_V4, MAP_DEST_V6, MAP_LIMITS,
    MAP_LISTEN_STATS, MAP_META, MAP_POLICY, MAP_RATE_V4, MAP_RATE_V6, MAP_SETTINGS, MAP_STATS,
    MAP_XSKS, PROGRAM_NAME,
};

use super::OBJECT;
use super::maps::XdpCounters;
use super::pins::{self, Pins};
use super::tables::{Steering, Tables, map_err};
use crate::plan::Plan;
use crate::system::netlink::{self, XdpAttachMode};

const MAP_NAMES: [&str; 22] = [
    MAP_XSKS,
    MAP_DEST_V4,
    MAP_DEST_V6,
    MAP_STATS,
    MAP_META,
    MAP_ACL[0][0],
    MAP_ACL[0][1],
    MAP_ACL[1][0],
    MAP_ACL[1][1],
    MAP_ACL_FAST,
    MAP_SETTINGS,
    MAP_BACKENDS_V4,
    MAP_BACKENDS_V6,
    MAP_LISTEN_STATS,
    MAP_POLICY[0][0],
    MAP_POLICY[0][1],
    MAP_POLICY[1][0],
    MAP_POLICY[1][1],
    MAP_LIMITS,
    MAP_RATE_V4,
    MAP_RATE_V6,
    MAP_BLOCK_HITS,
];

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("cannot prepare the pin directory {path}: {source}")]
    PinDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot load the XDP object: {0}")]
    Load(Box<EbpfError>),
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    #[error("XDP program: {0}")]
    Program(Box<ProgramError>),
    #[error("XDP link: {0}")]
    Link(Box<LinkError>),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<MapError>,
    },
    #[error("cannot pin {what} at {path}: {reason}")]
    Pin {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error(
        "{ifname} already has XDP program id {id} ({mode}) that instance {instance:?} does not own: \
         detach it (`ip link set dev {ifname} xdp off`) or stop whatever attached it"
    )]
    Busy {
        ifname: String,
        id: u32,
        mode: &'static str,
        instance: String,
    },
    #[error("xdp.mode = \"{mode}\": the kernel refused to attach to {ifname}: {source}{hint}")]
    Attach {
        ifname: String,
        mode: &'static str,
        source: Box<ProgramError>,
        hint: &'static str,
    },
    #[error("cannot query {ifname}: {source}")]
    Netlink {
        ifname: String,
        source: netlink::NetlinkError,
    },
}

impl From<EbpfError> for BpfError {
    fn from(e: EbpfError) -> Self {
        BpfError::Load(Box::new(e))
    }
}

impl From<ProgramError> for BpfError {
    fn from(e: ProgramError) -> Self {
        BpfError::Program(Box::new(e))
    }
}

impl From<LinkError> for BpfError {
    fn from(e: LinkError) -> Self {
        BpfError::Link(Box::new(e))
    }
}

/// How the program came to be on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Attached now; the interface had none.
    Fresh,
    /// Swapped in atomically for this instance's previous program.
    Replaced,
    /// This instance's previous program, identical, kept running.
    Adopted,
}

/// The attached program, its link and maps, all pinned under [`Pins`].
pub struct Attached {
    pins: Pins,
    link: FdLink,
    /// The XSKMAP, handed out per queue as [`XskSlot`]s.
    xsks: OwnedFd,
    tables: Tables,
    pub origin: Origin,
    pub prog_id: u32,
    pub mode: Option<XdpAttachMode>,
    /// Keeps a freshly loaded program's handles alive (the pins do too).
    _ebpf: Option<Ebpf>,
}

/// FNV-1a over the object and the parameters it is loaded with: equal
/// fingerprints mean an identical program and maps.
pub fn fingerprint(plan: &Plan) -> u64 {
    let mut h = xdpdns_common::hash::Fnv1a::new();
    h.write(OBJECT);
    h.write(&plan.max_frame_len.to_le_bytes());
    let (lo, n) = fwd_range(plan);
    h.write(&lo.to_le_bytes());
    h.write(&n.to_le_bytes());
    h.write(&xsk_entries(plan).to_le_bytes());
    h.write(&plan.interface.ifindex.to_le_bytes());
    h.write(format!("{:?}", plan.fixed.xdp.mode).as_bytes());
    h.finish()
}

/// The forwarding port range the program redirects replies on: (first, count).
fn fwd_range(plan: &Plan) -> (u32, u32) {
    let f = &plan.fixed.forwarding;
    if f.enabled {
        (u32::from(f.port_base), f.ports)
    } else {
        (0, 0)
    }
}

fn xsk_entries(plan: &Plan) -> u32 {
    plan.interface.queues.max(1)
}

fn aya_mode(mode: ConfigMode) -> XdpMode {
    match mode {
        ConfigMode::Auto => XdpMode::Default,
        ConfigMode::Native => XdpMode::Driver,
        ConfigMode::Generic => XdpMode::Skb,
    }
}

/// Puts the program on the interface, steered by `steering`.
pub fn attach(plan: &Plan, steering: &Steering) -> Result<Attached, BpfError> {
    let pins = Pins::new(&plan.pin_dir);
    pins.create().map_err(|source| BpfError::PinDir {
        path: plan.pin_dir.display().to_string(),
        source,
    })?;
    let ifname = plan.interface.name.clone();
    let on_iface = current_program(plan)?;

    let previous = if pins.exists(pins::LINK) {
        match PinnedLink::from_pin(pins.path(pins::LINK)) {
            Ok(p) => Some(FdLink::from(p)),
            Err(e) => {
                warn!(error = %e, "unusable pinned link from an earlier run; removing it");
                None
            }
        }
    } else {
        None
    };
    // The pinned link is ours to reuse only if it is what runs on the interface.
    let previous = previous.filter(|link| {
        let on_this_iface = link
            .info()
            .is_ok_and(|i| on_iface.is_some_and(|(_, id)| id == i.program_id()));
        if !on_this_iface {
            warn!("the pinned link of an earlier run is not attached to {ifname}; discarding it");
        }
        on_this_iface
    });
    if previous.is_none() {
        pins.remove(pins::LINK)
            .map_err(|e| pin_err("link", &pins, pins::LINK, e))?;
        if let Some((mode, id)) = on_iface {
            return Err(BpfError::Busy {
                ifname,
                id,
                mode: mode.name(),
                instance: plan.fixed.instance.clone(),
            });
        }
    }

    if let Some(link) = previous {
        if let Some(adopted) = try_adopt(plan, &pins, link)? {
            return finish(adopted, plan, steering);
        }
        // try_adopt declined and gave the link back through the pin: reload it.
        let link = FdLink::from(PinnedLink::from_pin(pins.path(pins::LINK))?);
        let attached = load_and_attach(plan, &pins, Some(link), steering)?;
        return finish(attached, plan, steering);
    }
    let attached = load_and_attach(plan, &pins, None, steering)?;
    finish(attached, plan, steering)
}

fn current_program(plan: &Plan) -> Result<Option<(XdpAttachMode, u32)>, BpfError> {
    netlink::link(plan.interface.ifindex)
        .map(|l| l.xdp)
        .map_err(|source| BpfError::Netlink {
            ifname: plan.interface.name.clone(),
            source,
        })
}

/// Adopts the pinned program and maps if their fingerprint matches ours.
fn try_adopt(plan: &Plan, pins: &Pins, link: FdLink) -> Result<Option<Attached>, BpfError> {
    if !MAP_NAMES.iter().all(|m| pins.exists(m)) {
        return Ok(None);
    }
    let open = |name: &'static str| -> Result<Map, BpfError> {
        let data = MapData::from_pin(pins.path(name)).map_err(map_err(name))?;
        Map::from_map_data(data).map_err(map_err(name))
    };
    let meta: Array<MapData, u64> = Array::try_from(open(MAP_META)?).map_err(map_err(MAP_META))?;
    if meta.get(&0, 0).ok() != Some(fingerprint(plan)) {
        info!(
            "the pinned program differs from this build or configuration; replacing it atomically"
        );
        return Ok(None);
    }
    let prog_id = link.info()?.program_id();
    Ok(Some(Attached {
        pins: pins.clone(),
        link,
        xsks: map_fd(&open(MAP_XSKS)?)?,
        tables: Tables::open(open)?,
        origin: Origin::Adopted,
        prog_id,
        mode: None,
        _ebpf: None,
    }))
}

/// Loads the embedded object and attaches it: through `previous` (an atomic
/// program swap) if given, directly to the interface otherwise.
fn load_and_attach(
    plan: &Plan,
    pins: &Pins,
    previous: Option<FdLink>,
    steering: &Steering,
) -> Result<Attached, BpfError> {
    let (fwd_lo, fwd_ports) = fwd_range(plan);
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_MAX_FRAME_LEN, &plan.max_frame_len, true)
        .override_global(GLOBAL_FWD_PORT_LO, &fwd_lo, true)
        .override_global(GLOBAL_FWD_PORTS, &fwd_ports, true)
        .map_max_entries(MAP_XSKS, xsk_entries(plan))
        .load(OBJECT)?;

    let mut maps: Vec<(&'static str, Map)> = Vec::with_capacity(MAP_NAMES.len());
    for name in MAP_NAMES {
        maps.push((name, ebpf.take_map(name).ok_or(BpfError::Missing(name))?));
    }
    let slot = |maps: &[(&'static str, Map)], name: &str| {
        maps.iter()
            .position(|(n, _)| *n == name)
            .expect("every map was taken above")
    };
    {
        let i = slot(&maps, MAP_META);
        let mut meta: Array<&mut MapData, u64> =
            Array::try_from(&mut maps[i].1).map_err(map_err(MAP_META))?;
        meta.set(0, fingerprint(plan), 0)
            .map_err(map_err(MAP_META))?;
    }
    // Duplicates to pin once attached; the maps themselves are steered now,
    // so the program matches from its first packet.
    let to_pin: Vec<(&'static str, MapData)> = maps
        .iter()
        .map(|(name, map)| {
            Ok((
                *name,
                MapData::from_fd(dup_map(map, name)?).map_err(map_err(name))?,
            ))
        })
        .collect::<Result<_, BpfError>>()?;
    let xsks = map_fd(&maps[slot(&maps, MAP_XSKS)].1)?;
    let mut tables = Tables::open(|name| Ok(maps.swap_remove(slot(&maps, name)).1))?;
    tables.steer(steering)?;

    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(BpfError::Missing("xdpdns program"))?
        .try_into()?;
    prog.load()?;
    let replaced = previous.is_some();
    let link_id = match previous {
        Some(link) => prog.attach_to_link(XdpLink::try_from(link)?)?,
        None => prog
            .attach_to_if_index(plan.interface.ifindex, aya_mode(plan.fixed.xdp.mode))
            .map_err(|source| attach_error(plan, source))?,
    };
    let link = FdLink::try_from(prog.take_link(link_id)?)?;

    // Swap the pins: the previous program and maps go away with their last pin.
    for name in MAP_NAMES.iter().chain([&pins::PROG]) {
        pins.remove(name)
            .map_err(|e| pin_err("stale pin", pins, name, e))?;
    }
    prog.pin(pins.path(pins::PROG))
        .map_err(|e| pin_err("program", pins, pins::PROG, e))?;
    for (name, map) in &to_pin {
        map.pin(pins.path(name))
            .map_err(|e| pin_err("map", pins, name, e))?;
    }
    let link = if replaced {
        link
    } else {
        let pinned = link
            .pin(pins.path(pins::LINK))
            .map_err(|e| pin_err("link", pins, pins::LINK, e))?;
        FdLink::from(pinned)
    };
    let prog_id = prog.info()?.id();
    Ok(Attached {
        pins: pins.clone(),
        link,
        xsks,
        tables,
        origin: if replaced {
            Origin::Replaced
        } else {
            Origin::Fresh
        },
        prog_id,
        mode: None,
        _ebpf: Some(ebpf),
    })
}

/// A duplicate of the XSKMAP's descriptor.
fn map_fd(map: &Map) -> Result<OwnedFd, BpfError> {
    if !matches!(map, Map::XskMap(_)) {
        return Err(BpfError::Missing("an XSKMAP named xsks"));
    }
    dup_map(map, MAP_XSKS)
}

/// A duplicate of a map's descriptor.
fn dup_map(map: &Map, name: &'static str) -> Result<OwnedFd, BpfError> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::XskMap(d) => d,
        _ => return Err(BpfError::Missing(name)),
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| BpfError::Map {
            name,
            source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            })),
        })
}

/// One queue's slot in the XSKMAP, held by that queue's supervisor: it puts
/// the dataplane's socket in and takes it out again.
pub struct XskSlot {
    map: XskMap<MapData>,
    queue: u32,
}

impl XskSlot {
    /// Puts a dataplane's AF_XDP socket in the slot.
    pub fn set(&mut self, socket: BorrowedFd<'_>) -> Result<(), BpfError> {
        self.map
            .set(self.queue, socket.as_raw_fd(), 0)
            .map_err(map_err(MAP_XSKS))
    }

    /// Empties the slot: the queue is on the kernel path from now on. An
    /// already empty slot is fine.
    pub fn clear(&mut self) -> Result<(), BpfError> {
        match self.map.unset(self.queue) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_err(MAP_XSKS)(e)),
        }
    }
}

fn finish(mut a: Attached, plan: &Plan, steering: &Steering) -> Result<Attached, BpfError> {
    a.tables.steer(steering)?;
    if let Some((mode, id)) = current_program(plan)? {
        a.mode = Some(mode);
        a.prog_id = id;
    }
    Ok(a)
}

fn attach_error(plan: &Plan, source: ProgramError) -> BpfError {
    let errno = match &source {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    let hint = match (errno, plan.fixed.xdp.mode) {
        (Some(libc::EOPNOTSUPP), ConfigMode::Native) => {
            " (the driver has no native XDP: use xdp.mode = \"auto\" or \"generic\")"
        }
        (Some(libc::EBUSY) | Some(libc::EEXIST), _) => " (another XDP program is attached)",
        _ => "",
    };
    BpfError::Attach {
        ifname: plan.interface.name.clone(),
        mode: match plan.fixed.xdp.mode {
            ConfigMode::Auto => "auto",
            ConfigMode::Native => "native",
            ConfigMode::Generic => "generic",
        },
        source: Box::new(source),
        hint,
    }
}

fn pin_err(what: &'static str, pins: &Pins, name: &str, e: impl std::fmt::Display) -> BpfError {
    BpfError::Pin {
        what,
        path: pins.path(name).display().to_string(),
        reason: e.to_string(),
    }
}

impl Attached {
    /// Steers the program: destinations, backends, ACL, settings.
    pub fn steer(&mut self, s: &Steering) -> Result<(), BpfError> {
        self.tables.steer(s)
    }

    /// The XSKMAP slot of `queue`, for its supervisor.
    pub fn xsk_slot(&self, queue: u32) -> Result<XskSlot, BpfError> {
        let err = map_err(MAP_XSKS);
        let fd = self.xsks.try_clone().map_err(|e| {
            err(MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }))
        })?;
        let data = MapData::from_fd(fd).map_err(map_err(MAP_XSKS))?;
        let map = XskMap::try_from(Map::XskMap(data)).map_err(map_err(MAP_XSKS))?;
        Ok(XskSlot { map, queue })
    }

    /// The program's per-outcome counters, summed over CPUs.
    pub fn counters(&self) -> XdpCounters {
        self.tables.counters()
    }

    /// Queries dropped per block since it was added, summed over CPUs.
    pub fn block_hits(&self) -> std::collections::HashMap<xdpdns_common::net::Prefix, u64> {
        self.tables.block_hits()
    }

    /// The first `n` listen addresses' counters, by `ListenStat`.
    pub fn listen_counters(&self, n: usize) -> Vec<[u64; ListenStat::COUNT as usize]> {
        self.tables.listen_counters(n)
    }

    pub fn pin_dir(&self) -> &std::path::Path {
        self.pins.dir()
    }

    /// Detaches the program and removes every pin of the instance.
    pub fn detach(self) -> std::io::Result<()> {
        let Attached { pins, link, .. } = self;
        let removed = pins.remove_all();
        // With its pin gone, dropping our descriptor detaches the link.
        drop(link);
        // The pin root is shared by instances: remove it only if now empty.
        if let Some(root) = pins.dir().parent() {
            let _ = std::fs::remove_dir(root);
        }
        removed
    }
}
