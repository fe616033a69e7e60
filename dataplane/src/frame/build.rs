//! Writing a frame's headers in front of a UDP payload that is already in
//! place: used to re-address a query to a backend and a backend's reply to
//! the client, whatever the address families and VLAN tags of either leg.

use super::*;

/// Addresses of one leg, as a frame carries them (read by
/// [`Parsed::addrs`], written by [`write_headers`]). IPv4 addresses use the
/// first 4 bytes of `*_ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub v6: bool,
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

impl Headers {
    /// Bytes of headers in front of the payload.
    pub fn header_len(&self) -> usize {
        ETH_HLEN
            + if self.vlan.is_some() { VLAN_HLEN } else { 0 }
            + if self.v6 { IPV6_HLEN } else { IPV4_HLEN }
            + UDP_HLEN
    }
}

/// Writes `h` so the headers end at `payload_at`, around `payload_len` bytes
/// of payload already there; returns where the frame starts, or `None` when
/// there is no room in front of the payload or after it.
pub fn write_headers(
    buf: &mut [u8],
    payload_at: usize,
    payload_len: usize,
    h: &Headers,
) -> Option<usize> {
    let start = payload_at.checked_sub(h.header_len())?;
    let end = payload_at.checked_add(payload_len)?;
    if end > buf.len() || payload_len > 0xffff - 48 {
        return None;
    }
    let f = &mut buf[start..end];
    f[0..6].copy_from_slice(&h.dst_mac);
    f[6..12].copy_from_slice(&h.src_mac);
    let mut at = 12;
    if let Some(tci) = h.vlan {
        f[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[14..16].copy_from_slice(&tci.to_be_bytes());
        at = 16;
    }
    let udp_len = UDP_HLEN + payload_len;
    let l4;
    if h.v6 {
        f[at..at + 2].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        let ip = &mut f[at + 2..at + 2 + IPV6_HLEN];
        ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
        ip[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        ip[6] = IPPROTO_UDP;
        ip[7] = REPLY_TTL;
        ip[8..24].copy_from_slice(&h.src_ip);
        ip[24..40].copy_from_slice(&h.dst_ip);
        l4 = at + 2 + IPV6_HLEN;
    } else {
        f[at..at + 2].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let ip = &mut f[at + 2..at + 2 + IPV4_HLEN];
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&((IPV4_HLEN + udp_len) as u16).to_be_bytes());
        // ID 0 with DF (RFC 6864 §4.1: an atomic datagram needs no ID):
        // frames are sized to the path; a router never fragments them.
        ip[4..10].copy_from_slice(&[0, 0, 0x40, 0, REPLY_TTL, IPPROTO_UDP]);
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&h.src_ip[..4]);
        ip[16..20].copy_from_slice(&h.dst_ip[..4]);
        let c = checksum::ipv4_header(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        l4 = at + 2 + IPV4_HLEN;
    }
    let udp = &mut f[l4..];
    udp[0..2].copy_from_slice(&h.sport.to_be_bytes());
    udp[2..4].copy_from_slice(&h.dport.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let c = if h.v6 {
        checksum::udp_v6(&h.src_ip, &h.dst_ip, udp)
    } else {
        let s: [u8; 4] = h.src_ip[..4].try_into().expect("4 bytes");
        let d: [u8; 4] = h.dst_ip[..4].try_into().expect("4 bytes");
        checksum::udp_v4(&s, &d, udp)
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    Some(start)
}

impl Parsed {
    /// The source address of `frame`, which `self` was parsed from.
    #[inline]
    pub fn source_ip(&self, frame: &[u8]) -> std::net::IpAddr {
        let ip = &frame[self.l3..self.l4];
        match self.family {
            Family::V4 => std::net::IpAddr::from([ip[12], ip[13], ip[14], ip[15]]),
            Family::V6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&ip[8..24]);
                std::net::IpAddr::from(a)
            }
        }
    }

    /// The destination address and port of `frame`, which `self` was
    /// parsed from.
    #[inline]
    pub fn dest(&self, frame: &[u8]) -> std::net::SocketAddr {
        let ip = &frame[self.l3..self.l4];
        let port = u16::from_be_bytes([frame[self.l4 + 2], frame[self.l4 + 3]]);
        let addr = match self.family {
            Family::V4 => std::net::IpAddr::from([ip[16], ip[17], ip[18], ip[19]]),
            Family::V6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&ip[24..40]);
                std::net::IpAddr::from(a)
            }
        };
        std::net::SocketAddr::new(addr, port)
    }

    /// Reads the addresses of `frame`, which `self` was parsed from.
    pub fn addrs(&self, frame: &[u8]) -> Headers {
        let mut a = Headers {
            src_mac: frame[6..12].try_into().expect("6 bytes"),
            dst_mac: frame[0..6].try_into().expect("6 bytes"),
            vlan: (self.l3 == ETH_HLEN + VLAN_HLEN)
                .then(|| u16::from_be_bytes([frame[14], frame[15]])),
            v6: self.family == Family::V6,
            src_ip: [0; 16],
            dst_ip: [0; 16],
            sport: u16::from_be_bytes([frame[self.l4], frame[self.l4 + 1]]),
            dport: u16::from_be_bytes([frame[self.l4 + 2], frame[self.l4 + 3]]),
        };
        let ip = &frame[self.l3..self.l4];
        if a.v6 {
            a.src_ip.copy_from_slice(&ip[8..24]);
            a.dst_ip.copy_from_slice(&ip[24..40]);
        } else {
            a.src_ip[..4].copy_from_slice(&ip[12..16]);
            a.dst_ip[..4].copy_from_slice(&ip[16..20]);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::testing::{FrameSpec, build, receive};

    fn headers(v6: bool, vlan: Option<u16>) -> Headers {
        let spec = if v6 { FrameSpec::v6() } else { FrameSpec::v4() };
        let ip = |a: std::net::SocketAddr| match a.ip() {
            std::net::IpAddr::V4(v) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v.octets());
                b
            }
            std::net::IpAddr::V6(v) => v.octets(),
        };
        Headers {
            dst_mac: crate::frame::testing::CLIENT_MAC,
            src_mac: crate::frame::testing::SERVER_MAC,
            vlan,
            v6,
            src_ip: ip(spec.dst),
            dst_ip: ip(spec.src),
            sport: spec.dst.port(),
            dport: spec.src.port(),
        }
    }

    #[test]
    fn headers_in_front_of_a_payload_make_a_valid_frame_for_every_family_and_tag() {
        for v6 in [false, true] {
            for vlan in [None, Some(42)] {
                let payload = b"\x12\x34\x81\x80\0\x01\0\0\0\0\0\0\x01a\0\0\x01\0\x01";
                let mut buf = vec![0u8; 512];
                buf[200..200 + payload.len()].copy_from_slice(payload);
                let h = headers(v6, vlan);
                let start = write_headers(&mut buf, 200, payload.len(), &h).unwrap();
                assert_eq!(start, 200 - h.header_len());
                let got = receive(&buf[start..200 + payload.len()]);
                assert_eq!(got.payload, payload);
                assert_eq!(got.vlan, vlan);
                assert_eq!(got.dst.port(), 40000);
            }
        }
    }

    #[test]
    fn no_room_is_refused_not_overrun() {
        let mut buf = vec![0u8; 100];
        let h = headers(true, Some(1));
        assert_eq!(
            write_headers(&mut buf, 10, 20, &h),
            None,
            "no room in front"
        );
        assert_eq!(
            write_headers(&mut buf, 80, 30, &h),
            None,
            "payload past the end"
        );
    }

    #[test]
    fn parsed_addresses_round_trip_through_a_rebuild() {
        let mut spec = FrameSpec::v6();
        spec.vlan = Some(9);
        let f = build(
            &spec,
            b"\x12\x34\x01\0\0\x01\0\0\0\0\0\0\x01a\0\0\x01\0\x01",
        );
        let p = parse(&f).unwrap();
        let h = p.addrs(&f);
        assert_eq!(h.vlan, Some(9));
        assert!(h.v6);
        assert_eq!((h.sport, h.dport), (40000, 53));
        let mut buf = vec![0u8; 512];
        let pl = &f[p.payload()..];
        buf[300..300 + pl.len()].copy_from_slice(pl);
        let start = write_headers(&mut buf, 300, pl.len(), &h).unwrap();
        let mut expected = f.clone();
        expected[p.l3 + 7] = REPLY_TTL; // we always send our own hop limit
        assert_eq!(
            &buf[start..300 + pl.len()],
            &expected[..],
            "rebuilt byte for byte"
        );
    }
}
