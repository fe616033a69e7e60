//! rtnetlink queries (RTM_GETLINK) through netlink-packet-route.

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: kernel answered error {0}")]
    Kernel(i32),
    #[error("netlink: cannot decode the answer: {0}")]
    Decode(String),
    #[error("netlink: no answer for the link")]
    NoAnswer,
}

/// How an XDP program is attached to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttachMode {
    Native,
    Generic,
    Offload,
    Multiple,
}

impl XdpAttachMode {
    pub fn name(self) -> &'static str {
        match self {
            XdpAttachMode::Native => "native",
            XdpAttachMode::Generic => "generic",
            XdpAttachMode::Offload => "offload",
            XdpAttachMode::Multiple => "multiple",
        }
    }
}

/// The parts of RTM_NEWLINK the loader uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub mtu: u32,
    pub num_rx_queues: u32,
    pub num_tx_queues: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// The attached XDP program: mode and program id.
    pub xdp: Option<(XdpAttachMode, u32)>,
    /// A veth: what its XDP program sends back (XDP_TX) reaches the peer
    /// only while the peer runs an XDP program of its own.
    pub veth: bool,
}

/// RTM_GETLINK for one interface index.
pub fn link(ifindex: u32) -> Result<LinkInfo, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    let mut packet = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
    );
    packet.header.flags = NLM_F_REQUEST;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut rx = vec![0u8; 64 * 1024];
    let n = socket.recv(&mut &mut rx[..], 0)?;
    let reply: NetlinkMessage<RouteNetlinkMessage> =
        NetlinkMessage::deserialize(&rx[..n]).map_err(|e| NetlinkError::Decode(e.to_string()))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Ok(parse(&link)),
        NetlinkPayload::Error(e) => Err(NetlinkError::Kernel(e.code.map(|c| c.get()).unwrap_or(0))),
        _ => Err(NetlinkError::NoAnswer),
    }
}

fn parse(link: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        up: link
            .header
            .flags
            .contains(netlink_packet_route::link::LinkFlags::Up),
        ..Default::default()
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::NumRxQueues(n) => info.num_rx_queues = *n,
            LinkAttribute::NumTxQueues(n) => info.num_tx_queues = *n,
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                info.mac = Some(mac);
            }
            LinkAttribute::LinkInfo(infos) => {
                info.veth = infos.iter().any(|i| {
                    matches!(
                        i,
                        netlink_packet_route::link::LinkInfo::Kind(
                            netlink_packet_route::link::InfoKind::Veth
                        )
                    )
                });
            }
            LinkAttribute::Xdp(xdp) => {
                let mut mode = None;
                let mut id = 0;
                for x in xdp {
                    match x {
                        LinkXdp::Attached(XdpAttached::Driver) => {
                            mode = Some(XdpAttachMode::Native)
                        }
                        LinkXdp::Attached(XdpAttached::SocketBuffer) => {
                            mode = Some(XdpAttachMode::Generic)
                        }
                        LinkXdp::Attached(XdpAttached::Hardware) => {
                            mode = Some(XdpAttachMode::Offload)
                        }
                        LinkXdp::Attached(XdpAttached::Multiple) => {
                            mode = Some(XdpAttachMode::Multiple)
                        }
                        LinkXdp::ProgId(p) => id = *p,
                        _ => {}
                    }
                }
                info.xdp = mode.map(|m| (m, id));
            }
            _ => {}
        }
    }
    info
}

/// Sends one rtnetlink request and collects every answer (dumps included).
fn request(msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    packet.header.flags = NLM_F_REQUEST | flags;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 256 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut at = 0;
        while at < n {
            let m: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&rx[at..n])
                .map_err(|e| NetlinkError::Decode(e.to_string()))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    let code = e.code.map(|c| c.get()).unwrap_or(0);
                    if code != 0 {
                        return Err(NetlinkError::Kernel(code));
                    }
                    return Ok(out);
                }
                _ => {}
            }
            if flags & netlink_packet_core::NLM_F_DUMP == 0 {
                return Ok(out);
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

/// How a destination is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The next hop: the destination itself, or its gateway.
    pub next_hop: std::net::IpAddr,
    pub oif: u32,
    /// The source address the kernel would use.
    pub source: Option<std::net::IpAddr>,
}

fn route_ip(a: &netlink_packet_route::route::RouteAddress) -> Option<std::net::IpAddr> {
    use netlink_packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(v) => Some((*v).into()),
        RouteAddress::Inet6(v) => Some((*v).into()),
        _ => None,
    }
}

/// RTM_GETROUTE for `dst`: next hop, interface and preferred source.
pub fn route_to(dst: std::net::IpAddr) -> Result<Route, NetlinkError> {
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
    let mut msg = RouteMessage::default();
    let (family, addr, bits) = match dst {
        std::net::IpAddr::V4(v) => (AddressFamily::Inet, RouteAddress::Inet(v), 32),
        std::net::IpAddr::V6(v) => (AddressFamily::Inet6, RouteAddress::Inet6(v), 128),
    };
    msg.header.address_family = family;
    msg.header.destination_prefix_length = bits;
    msg.attributes.push(RouteAttribute::Destination(addr));
    let answers = request(RouteNetlinkMessage::GetRoute(msg), 0)?;
    for a in answers {
        if let RouteNetlinkMessage::NewRoute(r) = a {
            let mut route = Route {
                next_hop: dst,
                oif: 0,
                source: None,
            };
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Gateway(g) => {
                        if let Some(ip) = route_ip(g) {
                            route.next_hop = ip;
                        }
                    }
                    RouteAttribute::Oif(i) => route.oif = *i,
                    RouteAttribute::PrefSource(s) => route.source = route_ip(s),
                    _ => {}
                }
            }
            return Ok(route);
        }
    }
    Err(NetlinkError::NoAnswer)
}

/// The link-layer address of `ip` on `ifindex` from the neighbour table,
/// if the entry is usable (not incomplete or failed).
pub fn neighbour(ifindex: u32, ip: std::net::IpAddr) -> Result<Option<[u8; 6]>, NetlinkError> {
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
    };
    let mut msg = NeighbourMessage::default();
    msg.header.family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let answers = request(
        RouteNetlinkMessage::GetNeighbour(msg),
        netlink_packet_core::NLM_F_DUMP,
    )?;
    for a in answers {
        let RouteNetlinkMessage::NewNeighbour(n) = a else {
            continue;
        };
        if n.header.ifindex != ifindex
            || matches!(
                n.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            )
        {
            continue;
        }
        let mut dst = None;
        let mut mac = None;
        for attr in &n.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                    dst = Some(std::net::IpAddr::from(*v))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                    dst = Some(std::net::IpAddr::from(*v))
                }
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(l);
                    mac = Some(m);
                }
                _ => {}
            }
        }
        if dst == Some(ip) {
            return Ok(mac);
        }
    }
    Ok(None)
}
