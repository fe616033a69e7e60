//! Test support: building query frames and checking replies with a checksum
//! implementation independent of the one under test.

use std::net::{IpAddr, SocketAddr};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];

/// RFC 1071, the slow and obvious way.
pub fn reference_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        sum += (u32::from(pair[0]) << 8) | u32::from(*pair.get(1).unwrap_or(&0));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo(src: IpAddr, dst: IpAddr, udp: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, 17]);
            p.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(udp.len() as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => panic!("mixed families"),
    }
    p.extend_from_slice(udp);
    p
}

/// Options for [`build`].
#[derive(Clone)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub vlan: Option<u16>,
    pub zero_udp_checksum: bool,
}

impl FrameSpec {
    pub fn v4() -> Self {
        FrameSpec {
            src_mac: CLIENT_MAC,
            dst_mac: SERVER_MAC,
            src: "192.0.2.2:40000".parse().unwrap(),
            dst: "192.0.2.1:53".parse().unwrap(),
            vlan: None,
            zero_udp_checksum: false,
        }
    }
    pub fn v6() -> Self {
        FrameSpec {
            src_mac: CLIENT_MAC,
            dst_mac: SERVER_MAC,
            src: "[2001:db8::2]:40000".parse().unwrap(),
            dst: "[2001:db8::1]:53".parse().unwrap(),
            vlan: None,
            zero_udp_checksum: false,
        }
    }
}

/// A complete Ethernet frame carrying `payload` as UDP, checksums correct.
pub fn build(spec: &FrameSpec, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&spec.dst_mac);
    f.extend_from_slice(&spec.src_mac);
    if let Some(tci) = spec.vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    let mut udp = Vec::new();
    udp.extend_from_slice(&spec.src.port().to_be_bytes());
    udp.extend_from_slice(&spec.dst.port().to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    if !spec.zero_udp_checksum {
        let c = reference_checksum(&pseudo(spec.src.ip(), spec.dst.ip(), &udp));
        let c = if c == 0 { 0xffff } else { c };
        udp[6..8].copy_from_slice(&c.to_be_bytes());
    }
    match (spec.src.ip(), spec.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 63, 17, 0, 0];
            ip[2..4].copy_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = reference_checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(udp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[17, 63]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(&udp);
    f
}

/// What a client sees in a reply frame, after checking every header and
/// checksum with the reference implementation. Panics on any defect.
pub struct Received {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub vlan: Option<u16>,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

pub fn receive(frame: &[u8]) -> Received {
    receive_from(frame, SERVER_MAC, CLIENT_MAC)
}

/// Like [`receive`], for a frame from `src_mac` to `dst_mac`.
pub fn receive_from(frame: &[u8], src_mac: [u8; 6], dst_mac: [u8; 6]) -> Received {
    assert_eq!(&frame[0..6], &dst_mac, "destination MAC");
    assert_eq!(&frame[6..12], &src_mac, "source MAC");
    let mut at = 12;
    let mut vlan = None;
    let mut proto = u16::from_be_bytes([frame[at], frame[at + 1]]);
    if proto == 0x8100 {
        vlan = Some(u16::from_be_bytes([frame[14], frame[15]]));
        at += 4;
        proto = u16::from_be_bytes([frame[at], frame[at + 1]]);
    }
    at += 2;
    let (src_ip, dst_ip, ttl, udp): (IpAddr, IpAddr, u8, &[u8]) = match proto {
        0x0800 => {
            let ip = &frame[at..at + 20];
            assert_eq!(ip[0], 0x45);
            assert_eq!(reference_checksum(ip), 0, "IPv4 header checksum");
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            assert_eq!(at + total, frame.len(), "IPv4 total length");
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (s.into(), d.into(), ip[8], &frame[at + 20..at + total])
        }
        0x86dd => {
            let ip = &frame[at..at + 40];
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            assert_eq!(at + 40 + plen, frame.len(), "IPv6 payload length");
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            (s.into(), d.into(), ip[7], &frame[at + 40..])
        }
        other => panic!("ethertype {other:#x}"),
    };
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        udp.len(),
        "UDP length"
    );
    let csum = u16::from_be_bytes([udp[6], udp[7]]);
    assert_ne!(csum, 0, "UDP checksum must be present");
    assert_eq!(
        reference_checksum(&pseudo(src_ip, dst_ip, udp)),
        0,
        "UDP checksum"
    );
    Received {
        src: SocketAddr::new(src_ip, u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([udp[2], udp[3]])),
        vlan,
        ttl,
        payload: udp[8..].to_vec(),
    }
}
