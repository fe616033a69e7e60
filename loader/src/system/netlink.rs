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
