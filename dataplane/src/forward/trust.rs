//! Shared in-flight entries are written by every dataplane of the
//! instance, so one compromised dataplane could write any of them. Before a
//! queue emits anything built from an entry (a relayed reply, a timeout
//! answer) it checks the entry describes a query this instance could have
//! received: sent to one of our listen addresses and ports, from a unicast
//! client that is not us, of the family it claims, with a unicast MAC. An
//! entry that fails is dropped, counted, and nothing is sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::shm::inflight::Client;

/// Our listen addresses, as entries carry them.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    addrs: Vec<(bool, [u8; 16], u16)>,
}

fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            b
        }
        IpAddr::V6(v) => v.octets(),
    }
}

fn ip_of(v6: bool, b: &[u8; 16]) -> Option<IpAddr> {
    if v6 {
        return Some(IpAddr::V6(Ipv6Addr::from(*b)));
    }
    // An IPv4 entry keeps its address in the first four bytes, the rest 0.
    if b[4..].iter().any(|x| *x != 0) {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
}

fn unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

impl Listeners {
    pub fn new(listen: &[SocketAddr]) -> Listeners {
        Listeners {
            addrs: listen
                .iter()
                .map(|a| (a.is_ipv6(), ip16(a.ip()), a.port()))
                .collect(),
        }
    }

    /// Whether `cl` may be answered.
    pub fn trusts(&self, cl: &Client) -> bool {
        let (Some(client), Some(_)) = (ip_of(cl.v6, &cl.ip), ip_of(cl.v6, &cl.local_ip)) else {
            return false;
        };
        let ours = self
            .addrs
            .iter()
            .any(|(v6, ip, port)| *v6 == cl.v6 && *ip == cl.local_ip && *port == cl.local_port);
        let is_us = self
            .addrs
            .iter()
            .any(|(v6, ip, _)| *v6 == cl.v6 && *ip == cl.ip);
        let mac_ok = !cl.xsk || (cl.mac[0] & 1 == 0 && cl.mac != [0; 6]);
        ours && !is_us && unicast(client) && cl.port != 0 && mac_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client {
            xsk: true,
            v6: false,
            vlan: None,
            mac: [2, 0, 0, 0, 0, 7],
            ip: ip16("192.0.2.2".parse().unwrap()),
            port: 40000,
            local_ip: ip16("192.0.2.1".parse().unwrap()),
            local_port: 53,
            id: 1,
            flags: 0x0100,
            edns: false,
            dnssec_ok: false,
        }
    }

    #[test]
    fn only_entries_a_query_of_ours_could_have_made_are_trusted() {
        let l = Listeners::new(&[
            "192.0.2.1:53".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
        ]);
        assert!(l.trusts(&client()));
        let bad = |f: &dyn Fn(&mut Client)| {
            let mut c = client();
            f(&mut c);
            !l.trusts(&c)
        };
        assert!(bad(&|c| c.local_port = 54), "not a listen port");
        assert!(
            bad(&|c| c.local_ip = ip16("192.0.2.9".parse().unwrap())),
            "not a listen address"
        );
        assert!(
            bad(&|c| c.ip = ip16("224.0.0.1".parse().unwrap())),
            "multicast"
        );
        assert!(
            bad(&|c| c.ip = ip16("255.255.255.255".parse().unwrap())),
            "broadcast"
        );
        assert!(bad(&|c| c.ip = [0; 16]), "unspecified");
        assert!(
            bad(&|c| c.ip = ip16("192.0.2.1".parse().unwrap())),
            "ourselves"
        );
        assert!(bad(&|c| c.port = 0), "port 0");
        assert!(bad(&|c| c.mac = [1, 0, 0x5e, 0, 0, 1]), "multicast MAC");
        assert!(bad(&|c| c.mac = [0; 6]), "no MAC");
        assert!(bad(&|c| c.ip[9] = 1), "an IPv4 entry with IPv6 bytes");
        assert!(
            bad(&|c| c.v6 = true),
            "the family it claims is not the listen's"
        );
        let mut v6 = client();
        v6.v6 = true;
        v6.ip = ip16("2001:db8::2".parse().unwrap());
        v6.local_ip = ip16("2001:db8::1".parse().unwrap());
        assert!(l.trusts(&v6));
        v6.ip = ip16("ff02::1".parse().unwrap());
        assert!(!l.trusts(&v6));
        // A kernel-path client needs no MAC.
        let mut k = client();
        k.xsk = false;
        k.mac = [0; 6];
        assert!(l.trusts(&k));
    }
}
